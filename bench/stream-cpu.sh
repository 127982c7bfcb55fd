#!/usr/bin/env bash
# CPU per streamed chunk (not a test, not run in CI): `tollgate gateway` against nginx
# (nginx-light, `proxy_buffering off`, keep-alive upstream) proxying the same paced SSE stream
# from the same upstream (bench/soak: sse-upstream), in one run. Each round runs the same load
# (bench/soak: stream-client, CONCURRENCY keep-alive connections streaming for ROUND_S seconds,
# every stream checked whole, usage asked for so both proxies deliver the same events) through
# each proxy in turn, alternating which goes first, and takes the proxy's CPU time from
# /proc/PID/stat (utime + stime; nginx: master and workers) over the run, divided by the SSE
# events the client received (content events, the finish event, the usage event, [DONE]).
# Prints each proxy's median over ROUNDS, the ratio of the medians, and the per-round
# tollgate / nginx ratios with their median and spread: on a shared machine the ratio of two
# figures taken seconds apart moves less than either figure.
#
#   bench/stream-cpu.sh                                   # 5 rounds × 2 × 10 s: about 2 minutes
#   ROUNDS=7 ROUND_S=15 CONCURRENCY=400 bench/stream-cpu.sh
#   CHUNKS=50 INTERVAL_MS=20 bench/stream-cpu.sh         # the stream shape (defaults)
#   GATEWAY_ARGS="--workers 1" bench/stream-cpu.sh       # extra flags for `tollgate gateway`
#   NO_BUILD=1 TOLLGATE=/path/tollgate bench/stream-cpu.sh
#
# Both proxies get as many workers as CPUs (nginx `worker_processes auto`, the gateway's
# default). Needs nginx (Debian: apt-get install nginx-light; installed here when run as root),
# curl and python3; builds target/release/tollgate and bench/soak.
set -euo pipefail
cd "$(dirname "$0")/.."
# free_port, nginx_conf, build_stream_bench, bench_workdir
source bench/common.sh

ROUNDS=${ROUNDS:-5}
ROUND_S=${ROUND_S:-10}
CONCURRENCY=${CONCURRENCY:-200}
CHUNKS=${CHUNKS:-50}
INTERVAL_MS=${INTERVAL_MS:-20}
PROMPT=1234 CACHED=234 REASONING=7

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx; then
  if [[ $(id -u) == 0 ]] && need apt-get; then
    echo "installing nginx-light..." >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "error: needs nginx (Debian: apt-get install nginx-light)" >&2
    exit 1
  fi
fi
for c in curl python3; do need "$c" || { echo "error: needs $c" >&2; exit 1; }; done
NGINX=$(command -v nginx)
if (( $(ulimit -n) < CONCURRENCY * 3 + 1024 )); then ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; fi

build_stream_bench

bench_workdir streamcpu

UP_PORT=$(free_port)
NGX_PORT=$(free_port)
TG_PORT=$(free_port)
TG_METRICS=$(free_port)

"$SSE_UPSTREAM" "listen=127.0.0.1:$UP_PORT" "chunks=$CHUNKS" "interval_ms=$INTERVAL_MS" \
  "prompt=$PROMPT" "cached=$CACHED" "reasoning=$REASONING" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

# nginx: a streaming reverse proxy, nothing buffered, keep-alive to the upstream.
WORKER_CONNS=$((CONCURRENCY * 2 + 512))
nginx_conf "$WORK/nginx" "worker_processes auto;" "
  upstream sse { server 127.0.0.1:$UP_PORT; keepalive 1024; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://sse;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
sed -i "s/worker_connections 4096;/worker_connections $(( WORKER_CONNS > 4096 ? WORKER_CONNS : 4096 ));/" "$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGX_PID=$!
PIDS+=("$NGX_PID")

start_gateway_route soak sse soak-model '{input: "2.50", cachedInput: "1.25", output: "10.00"}'

for port in "$UP_PORT/stats" "$TG_PORT/readyz"; do
  for i in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port" 2>/dev/null && break
    if (( i == 100 )); then echo "error: 127.0.0.1:$port does not answer" >&2; cat "$WORK"/*.log >&2; exit 1; fi
    sleep 0.1
  done
done

# CPU ticks (user + system) of a process and its children (nginx workers).
ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

# $1 = name, $2 = port, $3 = pid, $4 = seconds → "cpu_us_per_event events_per_s cpu_percent"
measure() {
  local before after out
  before=$(ticks "$3")
  out=$("$STREAM_CLIENT" "addr=127.0.0.1:$2" model=soak "concurrency=$CONCURRENCY" "duration=$4" hangup_pct=0 \
    "chunks=$CHUNKS" "prompt=$PROMPT" "cached=$CACHED" "reasoning=$REASONING" usage=always ramp=1 progress=3600 2>"$WORK/client.log")
  after=$(ticks "$3")
  python3 -c '
import json, sys
j = json.loads(sys.argv[1]); d, hz, name = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if j["errors"] or not j["completed"]:
    sys.exit(f"error: {name}: {j}")
cpu_s, events, elapsed = d / hz, j["events"], j["elapsed_s"]
print(f"{cpu_s * 1e6 / events:.3f} {events / elapsed:.0f} {100 * cpu_s / elapsed:.1f}")
' "$out" $((after - before)) "$HZ" "$1"
}

echo "warming up..." >&2
measure nginx "$NGX_PORT" "$NGX_PID" 3 >/dev/null
measure tollgate "$TG_PORT" "$TG_PID" 3 >/dev/null

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A R
for round in $(seq 1 "$ROUNDS"); do
  order="nginx tollgate"; (( round % 2 == 0 )) && order="tollgate nginx"
  for t in $order; do
    if [[ $t == nginx ]]; then read -r cpu eps pct < <(measure nginx "$NGX_PORT" "$NGX_PID" "$ROUND_S")
    else read -r cpu eps pct < <(measure tollgate "$TG_PORT" "$TG_PID" "$ROUND_S"); fi
    R[$t.cpu]+="$cpu "; R[$t.eps]+="$eps "; R[$t.pct]+="$pct "; declare "LAST_$t=$cpu"
  done
  q=$(awk -v a="$LAST_tollgate" -v b="$LAST_nginx" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
  R[q]+="$q "
  echo "round $round/$ROUNDS: CPU per event nginx $LAST_nginx us, tollgate $LAST_tollgate us (${q}x)" >&2
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
m() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | median; }
spread() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | sort -g | paste -sd' ' -; }
OK=$(curl -fsS "http://127.0.0.1:$TG_METRICS/metrics" | awk '/^tollgate_requests_total\{.*outcome="ok"/ {s += $2} END {print s + 0}')

awk -v nc="$(m nginx.cpu)" -v tc="$(m tollgate.cpu)" -v ne="$(m nginx.eps)" -v te="$(m tollgate.eps)" \
    -v np="$(m nginx.pct)" -v tp="$(m tollgate.pct)" -v qm="$(m q)" -v qs="$(spread q)" \
    -v ns="$(spread nginx.cpu)" -v ts="$(spread tollgate.cpu)" -v cores="$(nproc)" -v rounds="$ROUNDS" \
    -v secs="$ROUND_S" -v conc="$CONCURRENCY" -v chunks="$CHUNKS" -v iv="$INTERVAL_MS" -v load="$LOAD0" -v ok="$OK" 'BEGIN {
  printf "\nCPU per streamed chunk: loopback, %s cores, load %s at the start; %s streams at once, each %s content events %s ms apart (+ finish, usage, [DONE]); %s s per run, median of %s rounds\n\n", cores, load, conc, chunks, iv, secs, rounds
  printf "%-10s %16s %14s %12s   %s\n", "proxy", "CPU/event (us)", "events/s", "CPU (%)", "every round (us)"
  printf "%-10s %16.2f %14.0f %12.1f   %s\n", "nginx", nc, ne, np, ns
  printf "%-10s %16.2f %14.0f %12.1f   %s\n", "tollgate", tc, te, tp, ts
  printf "\ntollgate / nginx, CPU per event: %.2fx (ratio of the medians); per round %.2fx median [%s]\n", (nc > 0 ? tc / nc : 0), qm, qs
  printf "tollgate metered %s streams ok\n", ok
}'
