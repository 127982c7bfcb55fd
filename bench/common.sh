# Shared by the benchmark scripts (bench/gateway.sh, bench/instructions.sh, bench/stream-soak.sh,
# bench/stream-cpu.sh, bench/floor-experiments/measure.sh): sourced, not run.

# The fixed answer of the benchmarks' upstream (nginx `return 200`): a chat completion with usage.
BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the fixed upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}'

# $1 = file: the wrk script of every run (a small chat completion request to model `bench`).
write_post_lua() {
  cat >"$1" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"temperature":0.2}'
LUA
}

# Latency in microseconds from a wrk value (123.45us, 1.20ms, 2.00s).
to_us() { awk -v v="$1" 'BEGIN {
  n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'; }

# $1 = file: the callgrind runs' client, `python3 FILE PORT N`: N requests on one keep-alive
# connection, each answer read whole; waits for the proxy to answer first (under valgrind it
# starts slowly). Exits non-zero on any non-200.
write_callgrind_client() {
  cat >"$1" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"temperature":0.2}'
hdrs = {"Content-Type": "application/json"}
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/chat/completions", body, hdrs)
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("proxy did not answer")
    time.sleep(0.2)
for _ in range(n - 1):
    c.request("POST", "/v1/chat/completions", body, hdrs)
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
PY
}

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $1 = directory, $2 = extra top-level directives, $3 = http block body: writes $1/nginx.conf
# (foreground, no access log, long keep-alive, temp files under $1).
nginx_conf() {
  mkdir -p "$1/logs" "$1/tmp"
  cat >"$1/nginx.conf" <<CONF
daemon off;
$2
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_buffer_size 256k;
$3
}
CONF
}

# The streaming benchmarks' tools (bench/soak, its own Cargo project outside the workspace):
# sets SSE_UPSTREAM and STREAM_CLIENT, building them unless NO_BUILD is set and both exist.
# BENCH_TARGET: their target directory (default bench/soak/target).
build_soak_tools() {
  BENCH_TARGET=${BENCH_TARGET:-$PWD/bench/soak/target}
  SSE_UPSTREAM=$BENCH_TARGET/release/sse-upstream
  STREAM_CLIENT=$BENCH_TARGET/release/stream-client
  if [[ -z ${NO_BUILD:-} || ! -x $SSE_UPSTREAM || ! -x $STREAM_CLIENT ]]; then
    (cd bench/soak && CARGO_TARGET_DIR="$BENCH_TARGET" nice cargo build -q --release)
  fi
}

# A decimal with at most 6 fractional digits ("12.345678", "2.50") as an integer count of
# millionths: a price in USD per million tokens is then exactly pico-USD per token.
micro_of() {
  local int=${1%%.*} frac=""
  [[ $1 == *.* ]] && frac=${1#*.}
  if [[ ! $int =~ ^[0-9]+$ || ! $frac =~ ^[0-9]{0,6}$ ]]; then
    echo "error: not a decimal with at most 6 fractional digits: $1" >&2
    return 1
  fi
  frac=$(printf '%-6s' "$frac" | tr ' ' 0)
  echo $((10#$int * 1000000 + 10#$frac))
}

# Resident set (KiB) and open descriptors of a process.
proc_rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
proc_fds() { ls -U "/proc/$1/fd" | wc -l; }
