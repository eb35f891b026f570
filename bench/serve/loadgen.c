/*
 * loadgen: a small HTTP/1.1 load generator for loopback benchmarks and SLO tests (Linux, epoll).
 *
 *   open loop:   loadgen --rate R --duration S ...       requests are due at planned times; a latency counts
 *                                                         from its due time (no coordinated omission, as wrk2)
 *   closed loop: loadgen --concurrency C --duration S ... C connections, each sends when its last answer came
 *
 * Open-loop arrivals (--arrivals), all at an average of R per second:
 *   poisson  exponential gaps of mean 1/R, seeded (--seed), so runs repeat (real traffic; the default)
 *   even     request i at i/R (the kindest pattern there is)
 *   burst    --burst N requests at once every N/R seconds (clients whose sends line up)
 *
 * Bodies come from a file, one request body per line, used in turn. Keep-alive connections are opened
 * up front (--connections, open loop); a request that finds every connection busy waits for one, and
 * that wait is part of its latency. A request unanswered after --timeout seconds counts as a timeout.
 * Per request it writes "index<TAB>due_us<TAB>latency_us<TAB>status<TAB>captured<TAB>retry_after" to --out
 * (status 0: connection error, -1: timeout, -2: never sent), where "captured" is the JSON string value of
 * --capture KEY in the response body (e.g. index_version) and retry_after the Retry-After header's value
 * (-1: none). Only the summary goes to stdout. A request whose reused keep-alive connection turns out closed by
 * the server before any byte of the answer (its idle timeout racing our send) is sent once more on a new
 * connection, as HTTP clients do; the summary counts these ("stale_resends").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum { CLOSED, IDLE, BUSY };
enum { ST_ERROR = 0, ST_TIMEOUT = -1, ST_UNSENT = -2 };

typedef struct {
    char *data;
    size_t len;
} buf_t;

typedef struct {
    int64_t due_ns, end_ns;
    int status, retry_after, resent;
    char cap[64];
} rec_t;

typedef struct {
    int fd, state, served;
    const buf_t *req;
    size_t woff;
    char *rbuf;
    size_t rlen, rcap;
    int64_t idx, sent_ns;
} conn_t;

static struct sockaddr_in addr;
static buf_t *reqs;
static size_t nreqs;
static rec_t *recs;
static int64_t nrecs, reccap;
static conn_t *conns;
static int nconns, epfd;
static int *idle;
static int nidle;
static const char *capture_key;
static int64_t errors_connect, nstale;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg) {
    perror(msg);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("realloc");
    return q;
}

static int conn_open(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        errors_connect++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->fd = fd;
    c->state = IDLE;
    c->rlen = 0;
    c->served = 0;
    idle[nidle++] = (int)(c - conns);
    return 0;
}

static void conn_close(conn_t *c) {
    if (c->state == CLOSED) return;
    if (c->state == IDLE)
        for (int i = 0; i < nidle; i++)
            if (idle[i] == (int)(c - conns)) {
                idle[i] = idle[--nidle];
                break;
            }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = CLOSED;
}

static rec_t *new_rec(int64_t due) {
    if (nrecs == reccap) {
        reccap = reccap ? reccap * 2 : 4096;
        recs = xrealloc(recs, (size_t)reccap * sizeof(rec_t));
    }
    rec_t *r = &recs[nrecs++];
    r->due_ns = due;
    r->end_ns = 0;
    r->status = ST_UNSENT;
    r->retry_after = -1;
    r->resent = 0;
    r->cap[0] = 0;
    return r;
}

static void finish(conn_t *c, int status, int64_t t) {
    rec_t *r = &recs[c->idx];
    r->status = status;
    r->end_ns = t;
}

static int conn_flush(conn_t *c) {
    while (c->woff < c->req->len) {
        ssize_t n = write(c->fd, c->req->data + c->woff, c->req->len - c->woff);
        if (n < 0) {
            if (errno == EAGAIN) break;
            return -1;
        }
        c->woff += (size_t)n;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->woff < c->req->len ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* Put request `idx` (body idx % nreqs) on `c`, just taken from the idle list. */
static void start_on(conn_t *c, int64_t idx) {
    c->state = BUSY;
    c->req = &reqs[idx % (int64_t)nreqs];
    c->woff = 0;
    c->rlen = 0;
    c->idx = idx;
    c->sent_ns = now_ns();
}

static int resend_stale(conn_t *c);

/* `c` failed to send or was closed while busy: resend once if it was a stale keep-alive, else an error. */
static void fail_busy(conn_t *c) {
    if (resend_stale(c)) return;
    finish(c, ST_ERROR, now_ns());
    conn_close(c);
}

/* The connection of request idx was a reused one the server had closed, and nothing came back: send idx again
 * on a new connection, once. 1: handled (resent, or failed for good), 0: not such a case. */
static int resend_stale(conn_t *c) {
    int64_t idx = c->idx;
    if (c->served == 0 || c->rlen > 0 || recs[idx].resent) return 0;
    recs[idx].resent = 1;
    nstale++;
    conn_close(c);
    if (conn_open(c) < 0) {
        finish(c, ST_ERROR, now_ns());
        return 1;
    }
    nidle--; /* conn_open put c last in the idle list */
    start_on(c, idx);
    if (conn_flush(c) < 0) {
        finish(c, ST_ERROR, now_ns());
        conn_close(c);
    }
    return 1;
}

/* Send request `idx` on an idle connection; false when none is idle or can be opened. */
static int send_on_idle(int64_t idx) {
    if (nidle == 0) {
        for (int i = 0; i < nconns; i++)
            if (conns[i].state == CLOSED && conn_open(&conns[i]) == 0) break;
        if (nidle == 0) return 0;
    }
    conn_t *c = &conns[idle[--nidle]];
    start_on(c, idx);
    if (conn_flush(c) < 0) fail_busy(c);
    return 1;
}

static const char *find_ci(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp(hay + i, needle, m) == 0) return hay + i;
    return NULL;
}

/* 1 when a full response is buffered (recorded, connection idle again or closed), 0 if more is needed. */
static int try_parse(conn_t *c, int64_t t) {
    char *hdr_end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!hdr_end) return 0;
    size_t hlen = (size_t)(hdr_end - c->rbuf) + 4;
    const char *cl = find_ci(c->rbuf, hlen, "\r\ncontent-length:");
    if (!cl) {
        finish(c, ST_ERROR, t);
        conn_close(c);
        return 1;
    }
    size_t blen = strtoul(cl + 17, NULL, 10);
    if (c->rlen < hlen + blen) return 0;
    int status = atoi(c->rbuf + 9);
    finish(c, status, t);
    c->served++;
    const char *ra = find_ci(c->rbuf, hlen, "\r\nretry-after:");
    if (ra) recs[c->idx].retry_after = atoi(ra + 14);
    if (capture_key) {
        char pat[96];
        snprintf(pat, sizeof pat, "\"%s\":\"", capture_key);
        const char *v = memmem(c->rbuf + hlen, blen, pat, strlen(pat));
        if (v) {
            v += strlen(pat);
            rec_t *r = &recs[c->idx];
            size_t k = 0;
            while (k < sizeof r->cap - 1 && v + k < c->rbuf + hlen + blen && v[k] != '"') {
                r->cap[k] = v[k];
                k++;
            }
            r->cap[k] = 0;
        }
    }
    if (find_ci(c->rbuf, hlen, "\r\nconnection: close")) {
        conn_close(c);
    } else {
        c->state = IDLE;
        c->rlen = 0;
        idle[nidle++] = (int)(c - conns);
    }
    return 1;
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->rcap - c->rlen < 65536) {
            c->rcap = c->rcap ? c->rcap * 2 : 131072;
            c->rbuf = xrealloc(c->rbuf, c->rcap);
        }
        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (n > 0) {
            c->rlen += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EAGAIN) break;
        if (c->state == BUSY) { /* closed by the peer or reset */
            fail_busy(c);
            return;
        }
        conn_close(c);
        return;
    }
    if (c->state == BUSY) try_parse(c, now_ns());
}

static void load_bodies(const char *path, const char *host, const char *target, char **headers, int nheaders) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    char extra[4096] = "";
    for (int i = 0; i < nheaders; i++) {
        strncat(extra, headers[i], sizeof extra - strlen(extra) - 3);
        strcat(extra, "\r\n");
    }
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        reqs = xrealloc(reqs, (nreqs + 1) * sizeof(buf_t));
        size_t sz = (size_t)n + strlen(extra) + strlen(host) + strlen(target) + 160;
        char *b = malloc(sz);
        int len = snprintf(b, sz,
                           "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zd\r\n%s\r\n%s",
                           target, host, n, extra, line);
        reqs[nreqs].data = b;
        reqs[nreqs].len = (size_t)len;
        nreqs++;
    }
    free(line);
    fclose(f);
    if (nreqs == 0) {
        fprintf(stderr, "no bodies in %s\n", path);
        exit(2);
    }
}

/* Due times (ns from t0) of the open loop's requests: every arrival before `duration`, at `rate` on average. */
static int64_t plan_arrivals(int64_t **plan, const char *arrivals, double rate, double duration, int burst, long seed) {
    int64_t n = 0, cap = (int64_t)(duration * rate * 1.2) + 1024;
    int64_t *due = xrealloc(NULL, (size_t)cap * sizeof(int64_t));
    srand48(seed);
    for (double t = 0;; n++) {
        if (strcmp(arrivals, "even") == 0) t = (double)n / rate;
        else if (strcmp(arrivals, "burst") == 0) t = (double)(n / burst) * burst / rate;
        else t += -log(1.0 - drand48()) / rate;
        if (t >= duration) break;
        if (n == cap) due = xrealloc(due, (size_t)(cap *= 2) * sizeof(int64_t));
        due[n] = (int64_t)(t * 1e9);
    }
    *plan = due;
    return n;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P --bodies FILE (--rate R | --concurrency C) --duration S\n"
            "               [--arrivals poisson|even|burst] [--burst N] [--seed N]\n"
            "               [--host 127.0.0.1] [--path /search] [--connections N] [--timeout S]\n"
            "               [--max-requests N] [--out FILE] [--capture KEY] [--header 'K: V']...\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *target = "/search", *bodies = NULL, *out = NULL;
    const char *arrivals = "poisson";
    int port = 0, concurrency = 0, connections = 64, nheaders = 0, burst = 1;
    long seed = 1;
    double rate = 0, duration = 0, timeout = 10;
    int64_t max_requests = -1;
    char *headers[16];
    static struct option opts[] = {
        {"host", 1, 0, 'h'},        {"port", 1, 0, 'p'},    {"path", 1, 0, 'P'},    {"bodies", 1, 0, 'b'},
        {"rate", 1, 0, 'r'},        {"concurrency", 1, 0, 'c'}, {"duration", 1, 0, 'd'}, {"connections", 1, 0, 'n'},
        {"timeout", 1, 0, 't'},     {"max-requests", 1, 0, 'm'}, {"out", 1, 0, 'o'},  {"capture", 1, 0, 'k'},
        {"header", 1, 0, 'H'},      {"arrivals", 1, 0, 'a'}, {"burst", 1, 0, 'B'}, {"seed", 1, 0, 's'},
        {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'P': target = optarg; break;
        case 'b': bodies = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'c': concurrency = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'n': connections = atoi(optarg); break;
        case 't': timeout = atof(optarg); break;
        case 'm': max_requests = atoll(optarg); break;
        case 'o': out = optarg; break;
        case 'k': capture_key = optarg; break;
        case 'a': arrivals = optarg; break;
        case 'B': burst = atoi(optarg); break;
        case 's': seed = atol(optarg); break;
        case 'H':
            if (nheaders < 16) headers[nheaders++] = optarg;
            break;
        default: usage();
        }
    }
    if (!port || !bodies || duration <= 0 || (rate > 0) == (concurrency > 0) || connections < 1 || burst < 1) usage();
    if (strcmp(arrivals, "poisson") && strcmp(arrivals, "even") && strcmp(arrivals, "burst")) usage();
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) usage();
    char hostport[300];
    snprintf(hostport, sizeof hostport, "%s:%d", host, port);
    load_bodies(bodies, hostport, target, headers, nheaders);

    nconns = concurrency > 0 ? concurrency : connections;
    conns = calloc((size_t)nconns, sizeof(conn_t));
    idle = calloc((size_t)nconns, sizeof(int));
    epfd = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
    for (int i = 0; i < nconns; i++) {
        conns[i].state = CLOSED;
        if (conn_open(&conns[i]) < 0) {
            fprintf(stderr, "cannot connect to %s\n", hostport);
            return 2;
        }
    }

    const int64_t t0 = now_ns(), dur_ns = (int64_t)(duration * 1e9), tmo_ns = (int64_t)(timeout * 1e9);
    int64_t *plan = NULL;
    int64_t planned = rate > 0 ? plan_arrivals(&plan, arrivals, rate, duration, burst, seed) : INT64_MAX;
    if (max_requests >= 0 && max_requests < planned) planned = max_requests;
    int64_t next = 0; /* next request index to send */
    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns();
        int sending = t - t0 < dur_ns;
        if (rate > 0) {
            while (nrecs < planned && (!sending || plan[nrecs] <= t - t0)) new_rec(plan[nrecs]);
            while (next < nrecs && send_on_idle(next)) next++;
            if (next < nrecs || !sending) {
                /* backlog or drain: woken by completions, and by the clock for timeouts */
            } else if (next < planned) {
                struct itimerspec its = {0};
                int64_t at = t0 + plan[next];
                its.it_value.tv_sec = at / 1000000000LL;
                its.it_value.tv_nsec = at % 1000000000LL;
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            }
        } else if (sending) {
            while (next < planned && nidle > 0) {
                new_rec(t - t0);
                send_on_idle(next++);
            }
        }
        int busy = 0;
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            if (c->state != BUSY) continue;
            if (t - (rate > 0 ? t0 + recs[c->idx].due_ns : c->sent_ns) > tmo_ns) {
                finish(c, ST_TIMEOUT, t);
                conn_close(c);
            } else {
                busy++;
            }
        }
        int backlog = rate > 0 && next < (sending ? nrecs : planned);
        if (!sending && busy == 0 && (!backlog || t - t0 > dur_ns + tmo_ns)) break;
        if (!sending && backlog && nidle == 0 && busy == 0) {
            for (int i = 0; i < nconns && conns[i].state == CLOSED; i++) conn_open(&conns[i]);
            if (nidle == 0) break;
        }
        int n = epoll_wait(epfd, evs, 256, 5);
        for (int i = 0; i < n; i++) {
            uint32_t id = evs[i].data.u32;
            if (id == UINT32_MAX) {
                uint64_t x;
                (void)!read(tfd, &x, sizeof x);
                continue;
            }
            conn_t *c = &conns[id];
            if (c->state == CLOSED) continue;
            if ((evs[i].events & EPOLLOUT) && c->state == BUSY && conn_flush(c) < 0) {
                finish(c, ST_ERROR, now_ns());
                conn_close(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        }
    }
    int64_t elapsed = now_ns() - t0;

    FILE *f = out ? fopen(out, "w") : NULL;
    if (out && !f) die(out);
    int64_t ok = 0, timeouts = 0, errs = 0, unsent = 0;
    for (int64_t i = 0; i < nrecs; i++) {
        rec_t *r = &recs[i];
        int64_t lat = r->end_ns ? r->end_ns - t0 - r->due_ns : -1;
        if (r->status >= 200 && r->status < 300) ok++;
        else if (r->status == ST_TIMEOUT) timeouts++;
        else if (r->status == ST_UNSENT) unsent++;
        else if (r->status == ST_ERROR) errs++;
        if (f) fprintf(f, "%lld\t%lld\t%lld\t%d\t%s\t%d\n", (long long)i, (long long)(r->due_ns / 1000),
                       (long long)(lat >= 0 ? lat / 1000 : -1), r->status, r->cap, r->retry_after);
    }
    if (f) fclose(f);
    printf("{\"mode\": \"%s\", \"arrivals\": \"%s\", \"burst\": %d, \"seed\": %ld, \"rate\": %g, "
           "\"concurrency\": %d, \"duration_s\": %g, \"elapsed_s\": %.3f, \"requests\": %lld, \"ok\": %lld, "
           "\"timeouts\": %lld, \"errors\": %lld, \"unsent\": %lld, \"connect_errors\": %lld, "
           "\"stale_resends\": %lld, \"connections\": %d}\n",
           rate > 0 ? "open" : "closed", rate > 0 ? arrivals : "", burst, seed, rate, concurrency, duration,
           (double)elapsed / 1e9, (long long)nrecs, (long long)ok, (long long)timeouts, (long long)errs,
           (long long)unsent, (long long)errors_connect, (long long)nstale, nconns);
    return 0;
}
