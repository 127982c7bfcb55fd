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

# A work directory for one run in WORK, and PIDS: the processes the script starts. When the
# script exits they are killed and WORK is removed, unless KEEP_WORK names what it holds (then
# it is kept and its path printed).
bench_workdir() {
  WORK=$(mktemp -d -t "tollgate-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n ${KEEP_WORK:-} ]]; then echo "$KEEP_WORK kept in $WORK" >&2; else rm -rf "$WORK"; fi
}

# `$TOLLGATE gateway` on one ModelRoute `$1` whose only backend, `$2` (provider openai, model
# `$3`, prices `$4`, a YAML flow mapping), is the upstream at http://127.0.0.1:$UP_PORT/v1: the
# manifest rendered in $WORK, listening on TG_PORT with metrics on TG_METRICS, GATEWAY_ARGS
# appended, its log in $WORK/gateway.log. Sets TG_PID (also added to PIDS).
start_gateway_route() {
  mkdir -p "$WORK/manifests" "$WORK/creds"
  cat >"$WORK/manifests/route.yaml" <<EOF
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: $1}
spec:
  backends:
    - name: $2
      provider: openai
      model: $3
      endpoint: {baseUrl: "http://127.0.0.1:$UP_PORT/v1"}
      pricing: $4
EOF
  "$TOLLGATE" render -f "$WORK/manifests" >"$WORK/config.json"
  RUST_LOG=warn "$TOLLGATE" gateway --config "$WORK/config.json" --credentials-dir "$WORK/creds" \
    --listen "127.0.0.1:$TG_PORT" --metrics-listen "127.0.0.1:$TG_METRICS" ${GATEWAY_ARGS:-} >"$WORK/gateway.log" 2>&1 &
  TG_PID=$!
  PIDS+=("$TG_PID")
}

# The streaming benchmarks' binaries: target/release/tollgate (unless NO_BUILD is set) and
# bench/soak's tools; TOLLGATE defaults to the release binary.
build_stream_bench() {
  if [[ -z ${NO_BUILD:-} ]]; then
    echo "building target/release/tollgate and bench/soak..." >&2
    nice cargo build -q --release --bin tollgate
  fi
  build_soak_tools
  TOLLGATE=${TOLLGATE:-$PWD/target/release/tollgate}
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
