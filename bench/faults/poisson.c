/*
 * poisson: open-loop HTTP/1.1 load with Poisson arrivals, for the fault benchmark (Linux, epoll).
 *
 *   poisson --port P --bodies FILE --rate R --duration S --out FILE
 *           [--host 127.0.0.1] [--path /search] [--connections N] [--timeout S] [--seed N]
 *
 * Inter-arrival times are exponential with mean 1/R (seeded, so runs repeat); a request's latency counts from
 * its arrival time, so waiting for a free keep-alive connection is part of it. bench/serve/loadgen.c sends at
 * fixed intervals and does not read headers; this one records each answer's Retry-After. Per request it writes
 * "index<TAB>due_us<TAB>latency_us<TAB>status<TAB>retry_after" to --out (status 0: connection error,
 * -1: timeout, -2: never sent; retry_after: the header's value, -1 when absent). Only a summary goes to stdout.
 * A request whose reused keep-alive connection turns out closed by the server before any byte of the answer
 * (the server's idle timeout racing our send) is sent once more on a new connection, as HTTP clients do; the
 * summary counts these ("stale_resends").
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

enum { ST_ERROR = 0, ST_TIMEOUT = -1, ST_UNSENT = -2 };
enum { IDLE = -1, CLOSED = -2 }; /* conn_t.req when no request is in flight */

typedef struct {
    char *data;
    size_t len;
} buf_t;

typedef struct {
    int64_t due_ns, end_ns; /* from t0 */
    int status, retry_after, resent;
} rec_t;

typedef struct {
    int fd, want_out, served;
    int64_t req;
    size_t woff, rlen, rcap;
    char *rbuf;
} conn_t;

static struct sockaddr_in addr;
static buf_t *bodies;
static size_t nbodies;
static rec_t *recs;
static int64_t nrecs, t0;
static conn_t *conns;
static int nconns, epfd, nbusy;
static int64_t nstale;
static int *idle, nidle;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
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
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->fd = fd;
    c->want_out = 0;
    c->served = 0;
    c->req = IDLE;
    c->rlen = 0;
    idle[nidle++] = (int)(c - conns);
    return 0;
}

static void conn_close(conn_t *c) {
    if (c->req == CLOSED) return;
    if (c->req == IDLE)
        for (int i = 0; i < nidle; i++)
            if (idle[i] == (int)(c - conns)) {
                idle[i] = idle[--nidle];
                break;
            }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->req = CLOSED;
}

/* Record the answer (or failure) of the connection's request; the connection is then no longer busy. */
static void finish(conn_t *c, int status, int retry_after) {
    rec_t *r = &recs[c->req];
    r->status = status;
    r->retry_after = retry_after;
    r->end_ns = now_ns() - t0;
    c->req = IDLE;
    nbusy--;
}

static void fail(conn_t *c, int status) {
    finish(c, status, -1);
    conn_close(c);
}

static int conn_flush(conn_t *c) {
    const buf_t *b = &bodies[c->req % (int64_t)nbodies];
    while (c->woff < b->len) {
        ssize_t n = write(c->fd, b->data + c->woff, b->len - c->woff);
        if (n < 0) {
            if (errno == EAGAIN) break;
            return -1;
        }
        c->woff += (size_t)n;
    }
    int want_out = c->woff < b->len;
    if (want_out != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want_out;
    }
    return 0;
}

/* The connection of request i was a reused one the server had closed, and nothing came back: send i again on
 * a new connection, once. 1: handled (resent, or failed for good), 0: not such a case. */
static int resend_stale(conn_t *c) {
    int64_t i = c->req;
    if (c->served == 0 || c->rlen > 0 || recs[i].resent) return 0;
    recs[i].resent = 1;
    nstale++;
    conn_close(c); /* busy, so not in the idle list */
    nbusy--;
    if (conn_open(c) < 0) {
        recs[i].status = ST_ERROR;
        recs[i].end_ns = now_ns() - t0;
        return 1;
    }
    nidle--; /* conn_open put c last in the idle list */
    c->req = i;
    c->woff = 0;
    nbusy++;
    if (conn_flush(c) < 0) fail(c, ST_ERROR);
    return 1;
}

/* Send request i: 1 sent (or failed on write), 0 every connection is busy, -1 no connection can be opened. */
static int send_request(int64_t i) {
    if (nidle == 0) {
        for (int k = 0; k < nconns && nidle == 0; k++)
            if (conns[k].req == CLOSED) conn_open(&conns[k]);
        if (nidle == 0) return nbusy > 0 ? 0 : -1;
    }
    conn_t *c = &conns[idle[--nidle]];
    c->req = i;
    c->woff = 0;
    c->rlen = 0;
    nbusy++;
    if (conn_flush(c) < 0 && !resend_stale(c)) fail(c, ST_ERROR);
    return 1;
}

/* The value of header `name` (lower case, with the colon) within the first `n` bytes, or NULL. */
static const char *header(const char *buf, size_t n, const char *name) {
    size_t m = strlen(name);
    for (const char *p = buf; (p = memmem(p, n - (size_t)(p - buf), "\r\n", 2)) != NULL; p += 2) {
        if ((size_t)(p - buf) + 2 + m <= n && strncasecmp(p + 2, name, m) == 0) {
            const char *v = p + 2 + m;
            while (*v == ' ') v++;
            return v;
        }
    }
    return NULL;
}

static void try_parse(conn_t *c) {
    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) return;
    size_t hlen = (size_t)(end - c->rbuf) + 4;
    const char *cl = header(c->rbuf, hlen, "content-length:");
    if (!cl) {
        fail(c, ST_ERROR);
        return;
    }
    if (c->rlen < hlen + strtoul(cl, NULL, 10)) return;
    const char *ra = header(c->rbuf, hlen, "retry-after:");
    const char *conn = header(c->rbuf, hlen, "connection:");
    finish(c, atoi(c->rbuf + 9), ra ? atoi(ra) : -1);
    c->served++;
    if (conn && strncasecmp(conn, "close", 5) == 0) {
        conn_close(c);
    } else {
        c->rlen = 0;
        idle[nidle++] = (int)(c - conns);
    }
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->rcap - c->rlen < 65536) {
            c->rcap = c->rcap ? c->rcap * 2 : 131072;
            c->rbuf = xrealloc(c->rbuf, c->rcap);
        }
        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen - 1);
        if (n > 0) {
            c->rlen += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EAGAIN) break;
        if (c->req >= 0 && resend_stale(c)) return;
        if (c->req >= 0) finish(c, ST_ERROR, -1); /* closed by the peer or reset */
        conn_close(c);
        return;
    }
    c->rbuf[c->rlen] = 0;
    if (c->req >= 0) try_parse(c);
    else c->rlen = 0; /* nothing was asked on this connection */
}

static void load_bodies(const char *path, const char *hostport, const char *target) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        bodies = xrealloc(bodies, (nbodies + 1) * sizeof(buf_t));
        size_t sz = (size_t)n + strlen(hostport) + strlen(target) + 160;
        char *b = malloc(sz);
        if (!b) die("malloc");
        int len = snprintf(b, sz,
                           "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zd\r\n\r\n%s",
                           target, hostport, n, line);
        bodies[nbodies].data = b;
        bodies[nbodies].len = (size_t)len;
        nbodies++;
    }
    free(line);
    fclose(f);
    if (nbodies == 0) {
        fprintf(stderr, "no bodies in %s\n", path);
        exit(2);
    }
}

/* Exponential inter-arrival times with mean 1/rate until `duration` seconds. */
static void plan_arrivals(double rate, double duration, long seed) {
    srand48(seed);
    int64_t cap = (int64_t)(rate * duration * 1.2) + 16;
    recs = xrealloc(NULL, (size_t)cap * sizeof(rec_t));
    for (double t = -log(1.0 - drand48()) / rate; t < duration; t += -log(1.0 - drand48()) / rate) {
        if (nrecs == cap) {
            cap *= 2;
            recs = xrealloc(recs, (size_t)cap * sizeof(rec_t));
        }
        recs[nrecs++] = (rec_t){.due_ns = (int64_t)(t * 1e9), .end_ns = 0, .status = ST_UNSENT, .retry_after = -1,
                                 .resent = 0};
    }
}

static void usage(void) {
    fprintf(stderr, "usage: poisson --port P --bodies FILE --rate R --duration S --out FILE\n"
                    "               [--host 127.0.0.1] [--path /search] [--connections N] [--timeout S] [--seed N]\n");
    exit(2);
}

static void expire(int64_t t, int64_t timeout_ns) {
    for (int i = 0; i < nconns; i++)
        if (conns[i].req >= 0 && t - recs[conns[i].req].due_ns > timeout_ns) fail(&conns[i], ST_TIMEOUT);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *target = "/search", *bodies_path = NULL, *out = NULL;
    int port = 0;
    double rate = 0, duration = 0, timeout = 10;
    long seed = 1;
    nconns = 256;
    static struct option opts[] = {{"host", 1, 0, 'h'},    {"port", 1, 0, 'p'},        {"path", 1, 0, 'P'},
                                   {"bodies", 1, 0, 'b'},  {"rate", 1, 0, 'r'},        {"duration", 1, 0, 'd'},
                                   {"out", 1, 0, 'o'},     {"connections", 1, 0, 'n'}, {"timeout", 1, 0, 't'},
                                   {"seed", 1, 0, 's'},    {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'P': target = optarg; break;
        case 'b': bodies_path = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'o': out = optarg; break;
        case 'n': nconns = atoi(optarg); break;
        case 't': timeout = atof(optarg); break;
        case 's': seed = atol(optarg); break;
        default: usage();
        }
    }
    if (!port || !bodies_path || !out || rate <= 0 || duration <= 0 || timeout <= 0 || nconns < 1) usage();
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) usage();
    char hostport[300];
    snprintf(hostport, sizeof hostport, "%s:%d", host, port);
    load_bodies(bodies_path, hostport, target);
    plan_arrivals(rate, duration, seed);

    conns = calloc((size_t)nconns, sizeof(conn_t));
    idle = calloc((size_t)nconns, sizeof(int));
    if (!conns || !idle) die("calloc");
    epfd = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
    for (int i = 0; i < nconns; i++) {
        conns[i].req = CLOSED;
        if (conn_open(&conns[i]) < 0) {
            fprintf(stderr, "cannot connect to %s\n", hostport);
            return 2;
        }
    }

    t0 = now_ns();
    const int64_t timeout_ns = (int64_t)(timeout * 1e9), stop_ns = (int64_t)(duration * 1e9) + timeout_ns;
    int64_t next = 0;
    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns() - t0;
        while (next < nrecs && recs[next].due_ns <= t) {
            int sent = send_request(next);
            if (sent == 0) break;
            if (sent < 0) recs[next].status = ST_ERROR; /* nothing listens any more */
            next++;
        }
        expire(t, timeout_ns);
        if ((next == nrecs && nbusy == 0) || t > stop_ns) break;
        if (next < nrecs && nidle > 0) {
            struct itimerspec its = {0};
            int64_t at = t0 + recs[next].due_ns;
            its.it_value.tv_sec = at / 1000000000LL;
            its.it_value.tv_nsec = at % 1000000000LL;
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
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
            if (c->req == CLOSED) continue;
            if ((evs[i].events & EPOLLOUT) && c->req >= 0 && conn_flush(c) < 0) {
                if (!resend_stale(c)) fail(c, ST_ERROR);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        }
    }
    expire(INT64_MAX / 2, 0); /* still unanswered at the end: timeouts */
    int64_t elapsed = now_ns() - t0;

    FILE *f = fopen(out, "w");
    if (!f) die(out);
    for (int64_t i = 0; i < nrecs; i++) {
        const rec_t *r = &recs[i];
        int64_t lat = r->end_ns ? (r->end_ns - r->due_ns) / 1000 : -1;
        fprintf(f, "%lld\t%lld\t%lld\t%d\t%d\n", (long long)i, (long long)(r->due_ns / 1000), (long long)lat,
                r->status, r->retry_after);
    }
    fclose(f);
    printf("{\"rate\": %g, \"duration_s\": %g, \"requests\": %lld, \"elapsed_s\": %.3f, \"connections\": %d, "
           "\"stale_resends\": %lld}\n",
           rate, duration, (long long)nrecs, (double)elapsed / 1e9, nconns, (long long)nstale);
    return 0;
}
