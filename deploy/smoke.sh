#!/usr/bin/env bash
# deploy/smoke.sh — build the serve-cpu and trainer images for real and smoke-test them on this host.
#
#   deploy/smoke.sh                       # upstream: python:3.11-slim-bookworm from Docker Hub
#   DOCKER=/usr/bin/docker BASE_IMAGE=scalingnote/bookworm-base:local deploy/smoke.sh
#
# Steps: build both targets (BuildKit; CA bundle as the `pipcert` secret, the host's pip index settings as build
# args), seed a throwaway artifacts directory with COPIES of a pipeline run's bundle/, teacher/ and teacher-index/,
# then check: the API container gets ready, /search answers and gives the same top-10 ids as `scalingnote serve` on
# the host over the same files, it runs as uid 10001 and has no torch, the serve-cpu image stays under a size bound,
# and a rebuild job from the trainer image publishes a new index version that the running API swaps to without a
# failed request. Containers, helper processes and the temp directory are removed on exit. All traffic stays on
# 127.0.0.1 and every wait is bounded. Exit status: 0 all checks passed, 1 a check failed, 2 usage/preflight error.
#
# Knobs (environment):
#   DOCKER              docker CLI (default: docker). Docker 20.10 needs no buildx: DOCKER_BUILDKIT=1 is set here.
#   BASE_IMAGE          base of builder/serve-cpu/trainer (default python:3.11-slim-bookworm); see deploy/README.md
#                       for making scalingnote/bookworm-base:local with debootstrap (deploy/make-base-image.sh).
#   PIP_CERT            CA bundle for pip inside the builds (passed as the BuildKit secret `pipcert`; if unset:
#                       `pip config get global.cert`). PIP_CERT= (empty) builds without it.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST
#                       passed as build args (if unset: the host's `pip config get global.<key>`). Local
#                       directories and file:// URLs are served read-only on 127.0.0.1 for the duration of the
#                       builds (which then use --network host); http(s) URLs are passed unchanged.
#   SMOKE_NO_HOST_INDEXES=1   ignore the host's pip settings (plain PyPI + the PyTorch CPU index).
#   NO_BUILD=1          reuse scalingnote/serve-cpu:$TAG and scalingnote/trainer:$TAG as they are.
#   ARTIFACTS_SRC       pipeline output with bundle/, teacher/, teacher-index/ (default: artifacts/cpu); copied.
#   DATASET             BEIR dataset dir for the rebuild, mounted read-only (default: ../shared/data/scifact).
#   HOST_SCALINGNOTE    host CLI for the reference top-10 (default: .venv/bin/scalingnote; `none` to skip).
#   MAX_SERVE_CPU_MB    size bound of serve-cpu (default 1500). READY_TIMEOUT_S (180), REBUILD_TIMEOUT_S (1800),
#   SWAP_TIMEOUT_S      (120) bound the waits. KEEP_WORK=1 keeps the temp directory. LOG_DIR: where logs go.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "Usage: $0 [--help]   (configure with environment variables, see --help)" >&2
    exit 2
fi

DOCKER=${DOCKER:-docker}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)}
SERVE_IMAGE=scalingnote/serve-cpu:$TAG
TRAINER_IMAGE=scalingnote/trainer:$TAG
ARTIFACTS_SRC=${ARTIFACTS_SRC:-$ROOT/artifacts/cpu}
DATASET=${DATASET:-$ROOT/../shared/data/scifact}
HOST_SCALINGNOTE=${HOST_SCALINGNOTE:-$ROOT/.venv/bin/scalingnote}
MAX_SERVE_CPU_MB=${MAX_SERVE_CPU_MB:-1500}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
REBUILD_TIMEOUT_S=${REBUILD_TIMEOUT_S:-1800}
SWAP_TIMEOUT_S=${SWAP_TIMEOUT_S:-120}
HOST=127.0.0.1
UID_EXPECTED=10001
PY=${PYTHON:-python3}
export DOCKER_BUILDKIT=1

LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/scalingnote-smoke-logs.XXXXXX)}
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d /tmp/scalingnote-smoke.XXXXXX)
NAME=scalingnote-smoke-$$
API=$NAME-api
REBUILD=$NAME-rebuild
API_KEY=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')   # 48 hex characters (the service wants >= 32)
PIDS=()          # helper processes started here (package servers, host reference server, probe)
RESULTS=()       # "PASS|FAIL|SKIP<TAB>check<TAB>detail"
FIGURES=()       # "name<TAB>value"
FAILED=0

log() { printf '[smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
record() {  # record STATUS CHECK DETAIL
    RESULTS+=("$1"$'\t'"$2"$'\t'"$3")
    [[ $1 == FAIL ]] && FAILED=1
    log "$1: $2 — $3"
}
figure() { FIGURES+=("$1"$'\t'"$2"); }

summary() {
    local line status check detail
    echo
    echo "================================ scalingnote smoke summary ================================"
    for line in "${FIGURES[@]}"; do
        printf '  %-28s %s\n' "${line%%$'\t'*}" "${line#*$'\t'}"
    done
    echo "-------------------------------------------------------------------------------------------"
    for line in "${RESULTS[@]}"; do
        IFS=$'\t' read -r status check detail <<< "$line"
        printf '  %-4s  %-34s %s\n' "$status" "$check" "$detail"
    done
    echo "-------------------------------------------------------------------------------------------"
    if [[ $FAILED -eq 0 ]]; then echo "  SMOKE PASS"; else echo "  SMOKE FAIL   (logs: $LOG_DIR)"; fi
    echo "==========================================================================================="
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
    "$DOCKER" logs "$API" > "$LOG_DIR/api.log" 2>&1 || true
    "$DOCKER" rm -f "$API" "$REBUILD" > /dev/null 2>&1 || true
    if [[ ${KEEP_WORK:-0} == 1 ]]; then
        log "kept $WORK"
    else
        # Files there belong to uid 10001 now: remove them as root inside a container if we cannot.
        rm -rf "$WORK" 2> /dev/null \
            || "$DOCKER" run --rm --user 0:0 --network none -v "$WORK:/w" --entrypoint sh "$SERVE_IMAGE" \
                -c 'rm -rf /w/* /w/.[!.]*' > /dev/null 2>&1 || true
        rm -rf "$WORK" 2> /dev/null || log "could not remove $WORK"
    fi
    if [[ ${SUMMARY_DONE:-0} != 1 ]]; then
        [[ $rc -ne 0 && $FAILED -eq 0 ]] && record FAIL "script" "aborted (exit $rc), see $LOG_DIR"
        summary
    fi
    if [[ $FAILED -ne 0 && $rc -eq 0 ]]; then rc=1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {  # a failed step after which nothing else can be checked
    record FAIL "$1" "$2"
    exit 1
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

http_code() {  # http_code URL -> status code (000 if no answer)
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" || true
}

search_ids() {  # search_ids BASE_URL QUERY -> "version id1,id2,..." of the top 10
    local body
    body=$("$PY" -c 'import json, sys; print(json.dumps({"query": sys.argv[1], "k": 10}))' "$2")
    curl -sf -m 30 -H 'Content-Type: application/json' -d "$body" "$1/search" \
        | "$PY" -c 'import json, sys; r = json.load(sys.stdin); print(r["index_version"], ",".join(h["id"] for h in r["results"]))'
}

wait_ready() {  # wait_ready URL TIMEOUT_S [CONTAINER|PID] -> 0 once /readyz is 200
    local url=$1 deadline=$((SECONDS + $2)) who=${3:-} code
    while ((SECONDS < deadline)); do
        code=$(http_code "$url/readyz")
        [[ $code == 200 ]] && return 0
        if [[ $who =~ ^[0-9]+$ ]]; then
            kill -0 "$who" 2> /dev/null || return 1
        elif [[ -n $who && $("$DOCKER" inspect -f '{{.State.Running}}' "$who" 2> /dev/null) != true ]]; then
            return 1
        fi
        sleep 1
    done
    return 1
}

# ------------------------------------------------------------------------------------------------------ preflight
"$DOCKER" version --format 'docker client {{.Client.Version}}, engine {{.Server.Version}}' > "$LOG_DIR/docker-version.txt" 2>&1 \
    || { cat "$LOG_DIR/docker-version.txt" >&2; die preflight "no docker engine answers ($DOCKER)"; }
figure "docker" "$(cat "$LOG_DIR/docker-version.txt")"
for need in "$ARTIFACTS_SRC/bundle/bundle.json" "$ARTIFACTS_SRC/teacher/dual.json" \
    "$ARTIFACTS_SRC/teacher-index/manifest.json" "$DATASET/corpus.jsonl"; do
    [[ -f $need ]] || { echo "missing $need (set ARTIFACTS_SRC / DATASET)" >&2; exit 2; }
done
command -v curl > /dev/null || { echo "curl is needed" >&2; exit 2; }
if [[ $BASE_IMAGE == scalingnote/* ]] && ! "$DOCKER" image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    echo "base image $BASE_IMAGE is not here: make it with deploy/make-base-image.sh" >&2
    exit 2
fi
DATASET=$(cd "$DATASET" && pwd)
figure "base image" "$BASE_IMAGE"

# ------------------------------------------------------------------------------------------------------- builds
host_pip_setting() {  # host_pip_setting KEY -> the host pip's global.KEY ('' if none)
    local pip
    pip=$(command -v pip || command -v pip3 || echo "$ROOT/.venv/bin/pip")
    [[ -x $pip ]] || return 0
    "$pip" config get "global.$1" 2> /dev/null || true
}

# Helpers that start processes set globals instead of printing, so they never run in a $(…) subshell.
SERVED_URL=""
serve_local() {  # serve_local DIR SUBPATH: serve DIR read-only on 127.0.0.1; SERVED_URL=http://127.0.0.1:PORT/SUBPATH
    local dir=$1 sub=$2 port deadline
    port=$(free_port)
    "$PY" -m http.server --bind "$HOST" --directory "$dir" "$port" > "$LOG_DIR/pkgserver-$port.log" 2>&1 &
    PIDS+=($!)
    deadline=$((SECONDS + 15))
    until [[ $(http_code "http://$HOST:$port/") == 200 ]]; do
        ((SECONDS < deadline)) || die builds "package server for $dir did not start"
        sleep 0.2
    done
    SERVED_URL="http://$HOST:$port/$sub"
}

translate_url() {  # translate_url LOCATION index|links: SERVED_URL = LOCATION (http/https) or a loopback URL for it
    local url=$1 kind=$2 path
    SERVED_URL=""
    case $url in
        http://* | https://*) SERVED_URL=$url ;;
        *)
            path=${url#file://}
            if [[ ! -d $path ]]; then
                log "ignoring pip location $url (not a directory)"
                return 0
            fi
            path=$(cd "$path" && pwd)
            if [[ $kind == index ]]; then
                # A simple index's pages link ../../files/…: serve its parent so those links resolve.
                serve_local "$(dirname "$path")" "$(basename "$path")/"
            else
                serve_local "$path" ""
            fi
            ;;
    esac
}

BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
NETWORK_ARGS=()
PIP_SETTINGS=()
if [[ ${SMOKE_NO_HOST_INDEXES:-0} != 1 ]]; then
    for key in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; do
        conf=${key#PIP_}
        conf=${conf,,}
        value=${!key-$(host_pip_setting "${conf//_/-}")}
        [[ -n $value ]] || continue
        if [[ $key == PIP_TRUSTED_HOST ]]; then
            out=$value
        else
            kind=index
            [[ $key == PIP_FIND_LINKS ]] && kind=links
            out=""
            for url in $value; do
                translate_url "$url" "$kind"
                [[ -n $SERVED_URL ]] && out+="${out:+ }$SERVED_URL"
            done
            [[ $out == *"://$HOST:"* ]] && NETWORK_ARGS=(--network host)
        fi
        [[ -n $out ]] || continue
        BUILD_ARGS+=(--build-arg "$key=$out")
        PIP_SETTINGS+=("$key=$value${out:+ -> $out}")
    done
fi
PIP_CERT=${PIP_CERT-$(host_pip_setting cert)}
if [[ -n $PIP_CERT ]]; then
    [[ -f $PIP_CERT ]] || { echo "PIP_CERT=$PIP_CERT is not a file" >&2; exit 2; }
    BUILD_ARGS+=(--secret "id=pipcert,src=$PIP_CERT")
fi
figure "CA secret (pipcert)" "${PIP_CERT:-none}"
for setting in "${PIP_SETTINGS[@]}"; do figure "pip build arg" "$setting"; done

build() {  # build TARGET IMAGE
    local start=$SECONDS
    log "building $1 -> $2 (log: $LOG_DIR/build-$1.log)"
    if ! "$DOCKER" build --progress=plain --target "$1" -t "$2" "${BUILD_ARGS[@]}" "${NETWORK_ARGS[@]}" "$ROOT" \
        > "$LOG_DIR/build-$1.log" 2>&1; then
        tail -n 40 "$LOG_DIR/build-$1.log" >&2
        die "build $1" "docker build failed after $((SECONDS - start)) s (log: $LOG_DIR/build-$1.log)"
    fi
    figure "build time $1" "$((SECONDS - start)) s"
    record PASS "build $1" "$2 in $((SECONDS - start)) s"
}
if [[ ${NO_BUILD:-0} == 1 ]]; then
    for image in "$SERVE_IMAGE" "$TRAINER_IMAGE"; do
        "$DOCKER" image inspect "$image" > /dev/null 2>&1 || die builds "NO_BUILD=1 but $image is missing"
    done
    record SKIP "builds" "NO_BUILD=1: reusing $SERVE_IMAGE, $TRAINER_IMAGE"
else
    build serve-cpu "$SERVE_IMAGE"
    build trainer "$TRAINER_IMAGE"
fi
# The package servers are only for the builds.
for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; wait "$pid" 2> /dev/null || true; done
PIDS=()

# ---------------------------------------------------------------------------------------------------- image checks
serve_bytes=$("$DOCKER" image inspect -f '{{.Size}}' "$SERVE_IMAGE")
trainer_bytes=$("$DOCKER" image inspect -f '{{.Size}}' "$TRAINER_IMAGE")
serve_mb=$((serve_bytes / 1000000))
figure "image size serve-cpu" "$serve_mb MB ($serve_bytes bytes)"
figure "image size trainer" "$((trainer_bytes / 1000000)) MB ($trainer_bytes bytes)"
if ((serve_mb <= MAX_SERVE_CPU_MB)); then
    record PASS "serve-cpu size" "$serve_mb MB <= $MAX_SERVE_CPU_MB MB"
else
    record FAIL "serve-cpu size" "$serve_mb MB > $MAX_SERVE_CPU_MB MB"
fi
if "$DOCKER" run --rm --network none --entrypoint python "$SERVE_IMAGE" -c 'import torch' \
    > "$LOG_DIR/torch-import.log" 2>&1; then
    record FAIL "serve-cpu has no torch" "'import torch' succeeded"
elif grep -q "No module named 'torch'" "$LOG_DIR/torch-import.log"; then
    record PASS "serve-cpu has no torch" "import torch -> ModuleNotFoundError"
else
    record FAIL "serve-cpu has no torch" "import torch failed oddly: $(tail -n 1 "$LOG_DIR/torch-import.log")"
fi

# ------------------------------------------------------------------------------------------------------- artifacts
# Copies only: the containers never see the source tree's artifacts.
log "seeding $WORK/artifacts from $ARTIFACTS_SRC"
mkdir -p "$WORK/artifacts" "$WORK/seed"
cp -r "$ARTIFACTS_SRC/bundle" "$ARTIFACTS_SRC/teacher" "$WORK/artifacts/"
cp -r "$ARTIFACTS_SRC/teacher-index" "$WORK/seed/teacher-index"
cp -r "$ARTIFACTS_SRC/teacher-index" "$WORK/ref-index"
"$DOCKER" run --rm --user 0:0 --network none -v "$WORK/artifacts:/artifacts" --entrypoint chown "$SERVE_IMAGE" \
    -R "$UID_EXPECTED:$UID_EXPECTED" /artifacts
chmod -R a+rX "$WORK/seed"
# The first index version: `scalingnote index publish` of the pipeline's teacher index, in the trainer image.
"$DOCKER" run --rm --network none -v "$WORK/artifacts:/artifacts" -v "$WORK/seed:/seed:ro" "$TRAINER_IMAGE" \
    index publish --index /seed/teacher-index --root /artifacts/index > "$LOG_DIR/publish.log" 2>&1 \
    || { cat "$LOG_DIR/publish.log" >&2; die "seed index" "index publish failed"; }
version_seed=$(basename "$(readlink "$WORK/artifacts/index/current")")
record PASS "seed index root" "versions/$version_seed + current (index publish, trainer image)"

# -------------------------------------------------------------------------------------------------------- the API
PORT=$(free_port)
URL=http://$HOST:$PORT
log "starting $API on $URL"
"$DOCKER" run -d --name "$API" -p "$HOST:$PORT:8000" --memory 2g \
    -v "$WORK/artifacts:/artifacts" \
    -e SCALINGNOTE_API_KEY="$API_KEY" -e SCALINGNOTE_RELOAD_POLL_SECONDS=1 \
    "$SERVE_IMAGE" > /dev/null
start=$SECONDS
if wait_ready "$URL" "$READY_TIMEOUT_S" "$API"; then
    record PASS "api /readyz 200" "after $((SECONDS - start)) s (bound $READY_TIMEOUT_S s)"
    figure "api ready after" "$((SECONDS - start)) s"
else
    "$DOCKER" logs "$API" 2>&1 | tail -n 30 >&2
    die "api /readyz 200" "not ready within $READY_TIMEOUT_S s"
fi

uid=$("$DOCKER" exec "$API" sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' /proc/1/status)
user=$("$DOCKER" inspect -f '{{.Config.User}}' "$API")
if [[ $uid == "$UID_EXPECTED" ]]; then
    record PASS "api runs as uid $UID_EXPECTED" "PID 1 uid=$uid (image USER $user)"
else
    record FAIL "api runs as uid $UID_EXPECTED" "PID 1 uid=$uid (image USER $user)"
fi

# Queries: the dataset's first two, plus a fixed one.
mapfile -t QUERIES < <("$PY" -c '
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    for _, line in zip(range(2), f):
        print(json.loads(line)["text"])
print("stem cells and tissue regeneration")' "$DATASET/queries.jsonl")

API_IDS=()
api_version=""
for i in "${!QUERIES[@]}"; do
    ids=""
    read -r api_version ids <<< "$(search_ids "$URL" "${QUERIES[i]}")" || true
    API_IDS[i]=$ids
done
n_hits=$(tr ',' '\n' <<< "${API_IDS[0]}" | grep -c . || true)
if [[ $n_hits -eq 10 && $api_version == "$version_seed" ]]; then
    record PASS "api /search" "10 hits, index_version=$api_version"
else
    record FAIL "api /search" "$n_hits hits, index_version=${api_version:-none} (want $version_seed)"
fi

# The same files served by the host's `scalingnote serve` (same settings as the image: 2 ORT threads, auto variant).
if [[ $HOST_SCALINGNOTE == none || ! -x $HOST_SCALINGNOTE ]]; then
    record SKIP "top-10 = host scalingnote" "no host CLI ($HOST_SCALINGNOTE)"
else
    REF_PORT=$(free_port)
    (cd "$WORK" && exec env -u SCALINGNOTE_API_KEY SCALINGNOTE_ORT_THREADS=2 OMP_NUM_THREADS=2 \
        SCALINGNOTE_RELOAD_POLL_SECONDS=0 SCALINGNOTE_VARIANT=auto \
        "$HOST_SCALINGNOTE" serve --bundle "$WORK/artifacts/bundle" --index "$WORK/ref-index" \
        --host "$HOST" --port "$REF_PORT") > "$LOG_DIR/host-serve.log" 2>&1 &
    ref_pid=$!
    PIDS+=("$ref_pid")
    if wait_ready "http://$HOST:$REF_PORT" "$READY_TIMEOUT_S" "$ref_pid"; then
        same=0
        for i in "${!QUERIES[@]}"; do
            ref_ids=""
            read -r _ ref_ids <<< "$(search_ids "http://$HOST:$REF_PORT" "${QUERIES[i]}")" || true
            if [[ -n ${API_IDS[i]} && ${API_IDS[i]} == "$ref_ids" ]]; then
                same=$((same + 1))
                figure "top-10 q$((i + 1)) (api = host)" "${API_IDS[i]}"
            else
                figure "top-10 q$((i + 1)) api / host" "${API_IDS[i]:-none} / ${ref_ids:-none}"
            fi
        done
        if [[ $same -eq ${#QUERIES[@]} ]]; then
            record PASS "top-10 = host scalingnote" "$same/${#QUERIES[@]} queries, same ids in the same order"
        else
            record FAIL "top-10 = host scalingnote" "only $same/${#QUERIES[@]} queries match"
        fi
    else
        tail -n 20 "$LOG_DIR/host-serve.log" >&2
        record FAIL "top-10 = host scalingnote" "host reference server not ready"
    fi
    kill "$ref_pid" 2> /dev/null || true
    wait "$ref_pid" 2> /dev/null || true
fi

# ---------------------------------------------------------------------------------------- rebuild job + live swap
# A bounded probe: sequential /search requests (about 10/s) until 30 answers in a row came from a new version,
# or the deadline. It records every non-200 answer and every version seen.
cat > "$WORK/probe.py" << 'EOF'
import json, sys, time, urllib.error, urllib.request
url, old, deadline_s, stop_file, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
deadline = time.monotonic() + deadline_s
body = json.dumps({"query": "stem cells and tissue regeneration", "k": 10}).encode()
ok = failed = after_swap = 0
versions, errors, first_new_at = [], [], None
start = time.monotonic()
while time.monotonic() < deadline and after_swap < 30:
    req = urllib.request.Request(url + "/search", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            version = json.load(resp)["index_version"]
        ok += 1
        if not versions or versions[-1] != version:
            versions.append(version)
        if version != old:
            after_swap += 1
            first_new_at = first_new_at or round(time.monotonic() - start, 1)
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        failed += 1
        errors.append(repr(exc)[:200])
    if after_swap == 0:
        try:
            open(stop_file).close()
            break  # the rebuild failed: no swap is coming
        except OSError:
            pass
    time.sleep(0.1)
json.dump({"ok": ok, "failed": failed, "versions": versions, "errors": errors[:5], "first_new_at_s": first_new_at,
           "after_swap": after_swap}, open(out, "w"))
EOF
log "rebuild job ($TRAINER_IMAGE) while probing $URL/search"
"$PY" "$WORK/probe.py" "$URL" "$version_seed" "$((REBUILD_TIMEOUT_S + SWAP_TIMEOUT_S))" "$WORK/rebuild.failed" \
    "$WORK/probe.json" &
probe_pid=$!
PIDS+=("$probe_pid")
start=$SECONDS
rebuild_ok=1
timeout "$REBUILD_TIMEOUT_S" "$DOCKER" run --name "$REBUILD" --network none \
    -v "$WORK/artifacts:/artifacts" -v "$DATASET:/data/scifact:ro" -e SCALINGNOTE_BUNDLE=/artifacts/bundle \
    "$TRAINER_IMAGE" index rebuild --dataset /data/scifact --doc-encoder /artifacts/teacher --root /artifacts/index \
    > "$LOG_DIR/rebuild.log" 2>&1 || rebuild_ok=0
figure "rebuild job" "$((SECONDS - start)) s"
version_new=$(basename "$(readlink "$WORK/artifacts/index/current")")
if [[ $rebuild_ok -eq 1 && $version_new != "$version_seed" ]]; then
    record PASS "rebuild job (trainer image)" "published $version_new in $((SECONDS - start)) s"
else
    touch "$WORK/rebuild.failed"
    tail -n 30 "$LOG_DIR/rebuild.log" >&2
    record FAIL "rebuild job (trainer image)" "exit ok=$rebuild_ok, current=$version_new (log: $LOG_DIR/rebuild.log)"
fi
wait "$probe_pid" || true
figure "index version before" "$version_seed"
figure "index version after" "$version_new"
if [[ -f $WORK/probe.json ]]; then
    read -r p_ok p_failed p_versions p_after p_first <<< "$("$PY" -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["ok"], p["failed"], ">".join(p["versions"]) or "-", p["after_swap"], p["first_new_at_s"])' "$WORK/probe.json")"
    figure "requests during rebuild" "$p_ok ok, $p_failed failed; versions seen: $p_versions"
    if [[ $p_failed -eq 0 && $p_after -ge 30 && $p_versions == "$version_seed>$version_new" ]]; then
        record PASS "live swap, no failed request" "$p_ok requests, 0 failed, swapped to $version_new (${p_first} s)"
    else
        record FAIL "live swap, no failed request" \
            "$p_ok ok / $p_failed failed, versions $p_versions, $p_after answers from the new version"
    fi
else
    record FAIL "live swap, no failed request" "the probe wrote no result"
fi
admin_version=$(curl -sf -m 10 -H "X-API-Key: $API_KEY" "$URL/admin/index" \
    | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["index_version"])' || true)
ready_version=$(curl -sf -m 10 "$URL/readyz" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["index_version"])' \
    || true)
if [[ $admin_version == "$version_new" && $ready_version == "$version_new" ]]; then
    record PASS "/admin/index + /readyz version" "$admin_version"
else
    record FAIL "/admin/index + /readyz version" "admin=${admin_version:-none} readyz=${ready_version:-none}"
fi
after_ids=""
read -r _ after_ids <<< "$(search_ids "$URL" "${QUERIES[0]}")" || true
if [[ $after_ids == "${API_IDS[0]}" ]]; then
    figure "top-10 q1 after swap" "unchanged (same teacher, same corpus)"
else
    figure "top-10 q1 after swap" "${after_ids:-none} (differs from before)"
fi

summary
SUMMARY_DONE=1
