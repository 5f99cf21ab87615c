#!/usr/bin/env bash
# The HTTP layer alone against nginx (issue 12): GET /health requests/s at 100 keep-alive
# connections with wrk, each server pinned to one core (nginx: one worker serving a 2-byte file),
# wrk on another core; then resident bytes per idle connection at 1,000 connections.
#
#   scripts/http_bench.sh            # DURATION=10s ROUNDS=2 SERVER_CORE=0 WRK_CORE=1 by default
#
# Needs: wrk, nginx (Debian packages), python3, and a release build of the example:
#   cargo build --release -p server --example http_health
# Prints one JSON line per measurement and a summary JSON line last.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/examples/http_health}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-100}
SERVER_CORE=${SERVER_CORE:-0}
WRK_CORE=${WRK_CORE:-1}
IDLE_CONNS=${IDLE_CONNS:-1000}
for tool in wrk nginx python3 taskset; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install wrk nginx)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "error: $BIN missing: cargo build --release -p server --example http_health" >&2; exit 1; }

TMP=$(mktemp -d)
chmod 755 "$TMP" # the nginx worker runs as an unprivileged user
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx: one worker, no access log, unlimited keep-alive requests, a 2-byte file.
NGINX_PORT=$(free_port)
mkdir -p "$TMP/www" "$TMP/tmp"
printf 'ok' > "$TMP/www/health"
cat > "$TMP/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path $TMP/tmp; proxy_temp_path $TMP/tmp; fastcgi_temp_path $TMP/tmp;
    uwsgi_temp_path $TMP/tmp; scgi_temp_path $TMP/tmp;
    default_type text/plain;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/www;
    }
}
CONF
taskset -c "$SERVER_CORE" nginx -c "$TMP/nginx.conf" -p "$TMP"
sleep 0.5
[ "$(curl -s "http://127.0.0.1:$NGINX_PORT/health" 2>/dev/null || python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$NGINX_PORT/health').read().decode(),end='')")" = ok ] \
    || { echo "error: nginx does not serve /health" >&2; cat "$TMP/nginx-error.log" >&2; exit 1; }

start_ours() { # io -> sets OURS_PID, OURS_PORT
    local io=$1 port
    port=$(free_port)
    taskset -c "$SERVER_CORE" "$BIN" --io "$io" --port "$port" > "$TMP/ours-$io.out" 2> "$TMP/ours-$io.err" &
    OURS_PID=$!
    PIDS+=("$OURS_PID")
    OURS_PORT=$port
    for _ in $(seq 100); do
        grep -q url "$TMP/ours-$io.out" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "error: http_health --io $io did not start" >&2; cat "$TMP/ours-$io.err" >&2; exit 1
}

run_wrk() { # name port -> prints requests/s
    local out
    out=$(taskset -c "$WRK_CORE" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$2/health")
    echo "$out" | awk '/Requests\/sec/ {print $2}'
    echo "$out" | grep -q "Non-2xx" && { echo "error: $1 answered non-2xx" >&2; echo "$out" >&2; exit 1; } || true
}

declare -A SUM
SUM[nginx]=0; SUM[epoll]=0; SUM[io-uring]=0
for round in $(seq "$ROUNDS"); do
    for name in nginx epoll io-uring; do
        if [ "$name" = nginx ]; then
            rps=$(run_wrk nginx "$NGINX_PORT")
        else
            start_ours "$name"
            rps=$(run_wrk "$name" "$OURS_PORT")
            kill "$OURS_PID"; wait "$OURS_PID" 2>/dev/null || true
        fi
        echo "{\"round\": $round, \"server\": \"$name\", \"requests_per_s\": $rps, \"connections\": $CONNS, \"duration\": \"$DURATION\"}"
        SUM[$name]=$(python3 -c "print(${SUM[$name]} + $rps)")
    done
done

# Resident bytes per idle connection: RSS before and after $IDLE_CONNS keep-alive connections
# that each made one request and then stay open.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hold_idle() { # port pid -> prints RSS delta bytes per connection
    python3 - "$1" "$2" "$IDLE_CONNS" <<'PY'
import socket, sys, time, resource
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, max(n + 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
time.sleep(0.3)
before = rss()
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"):
        got += s.recv(4096)
    held.append(s)
time.sleep(1.0)
after = rss()
print((after - before) / n)
PY
}
declare -A PER_CONN
for io in epoll io-uring; do
    start_ours "$io"
    PER_CONN[$io]=$(hold_idle "$OURS_PORT" "$OURS_PID")
    kill "$OURS_PID"; wait "$OURS_PID" 2>/dev/null || true
    echo "{\"server\": \"$io\", \"idle_connections\": $IDLE_CONNS, \"rss_bytes_per_idle_connection\": ${PER_CONN[$io]}}"
done
NGINX_WORKER=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)
NGINX_PER_CONN=$(hold_idle "$NGINX_PORT" "$NGINX_WORKER")
echo "{\"server\": \"nginx\", \"idle_connections\": $IDLE_CONNS, \"rss_bytes_per_idle_connection\": $NGINX_PER_CONN}"

python3 - <<PY
import json
n, e, u = ${SUM[nginx]} / $ROUNDS, ${SUM[epoll]} / $ROUNDS, ${SUM[io-uring]} / $ROUNDS
print(json.dumps({
    "nginx_requests_per_s": round(n), "epoll_requests_per_s": round(e), "io_uring_requests_per_s": round(u),
    "epoll_vs_nginx": round(e / n, 3), "io_uring_vs_nginx": round(u / n, 3),
    "rss_bytes_per_idle_connection": {"epoll": round(${PER_CONN[epoll]}), "io_uring": round(${PER_CONN[io-uring]}),
                                      "nginx": round($NGINX_PER_CONN)},
    "connections": $CONNS, "duration": "$DURATION", "rounds": $ROUNDS,
}))
PY
