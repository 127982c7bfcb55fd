#!/usr/bin/env bash
# Gateway overhead benchmark (not a test): wrk against, on loopback,
#   (a) a fast fixed-body upstream (nginx `return 200` with a chat completion + usage),
#   (b) nginx as a plain keep-alive reverse proxy in front of it,
#   (c) `tollgate gateway` in front of it (routing, body rewrite, usage parsing, exact metering),
#   (d) the floor: examples/floor_proxy.rs, a pass-through proxy on exactly the gateway's stack
#       (its listener, axum, hyper-util's client, thread-per-core runtimes) doing nothing else:
#       nginx → floor is what the stack costs, floor → tollgate is the gateway's own work.
# Prints p50/p99 latency at 1 connection, the latency each proxy adds over (a), requests/s at 32
# connections, the ratios tollgate/nginx, tollgate/floor and floor/nginx, and the gateway's RSS.
#
#   bench/gateway.sh                      # 5 rounds × 5s per measurement: about 5 minutes, extras 7 more
#   ROUNDS=5 DURATION=10s bench/gateway.sh
#   GATEWAY_ARGS="--workers 1" bench/gateway.sh    # extra flags for `tollgate gateway`
#   NO_BUILD=1 TOLLGATE=/path/a FLOOR=/path/b bench/gateway.sh   # measure given binaries
#   EXTRAS=0 bench/gateway.sh             # skip the extras (see the end of this file)
#
# The targets are measured in turns, ROUNDS times, and the median of each figure is printed, so
# a burst of load from something else on the machine skews one round, not one target. Tollgate
# and the floor are measured back to back (in turns which goes first), and each round's
# tollgate / floor ratios are printed too, with their median and spread: on a shared machine
# the ratio of two figures taken seconds apart moves less than either figure. The CPU
# time each proxy spends per request (from /proc, during the throughput runs) is printed too: it
# is the figure least sensitive to other load.
#
# Needs wrk and nginx (Debian: apt-get install wrk nginx-light; installed here when run as root)
# and builds target/release/tollgate.
set -euo pipefail
cd "$(dirname "$0")/.."
# BODY, write_post_lua, to_us, free_port, nginx_conf, bench_workdir
source bench/common.sh

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  if [[ $(id -u) == 0 ]] && need apt-get; then
    echo "installing wrk and nginx-light..." >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
  else
    echo "error: needs wrk and nginx (Debian: apt-get install wrk nginx-light)" >&2
    exit 1
  fi
fi
NGINX=$(command -v nginx)

if [[ -z ${NO_BUILD:-} ]]; then
  echo "building target/release/tollgate..." >&2
  cargo build -q --release --bin tollgate --example floor_proxy
fi
TOLLGATE=${TOLLGATE:-$PWD/target/release/tollgate}
FLOOR=${FLOOR:-$PWD/target/release/examples/floor_proxy}

bench_workdir bench

UP_PORT=$(free_port)
NGX_PORT=$(free_port)
TG_PORT=$(free_port)
TG_METRICS=$(free_port)
FL_PORT=$(free_port)

nginx_up() { # $1 = name, $2 = http block body: nginx with one worker per CPU, started
  nginx_conf "$WORK/$1" "worker_processes auto;" "$2"
  "$NGINX" -p "$WORK/$1" -c "$WORK/$1/nginx.conf" &
  PIDS+=($!)
  eval "${1^^}_PID=$!"
}

# (a) the upstream: a fixed JSON body for any path.
nginx_up upstream "
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type application/json; return 200 '$BODY'; }
  }"

# (b) nginx as a keep-alive reverse proxy.
nginx_up proxy "
  upstream fixed { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://fixed;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering on;
    }
  }"

# (c) tollgate: one route whose only backend is the fixed upstream.
start_gateway_route bench fixed bench-model '{input: "2.50", cachedInput: "1.25", output: "10.00"}'

# (d) the floor, with as many worker threads as the gateway (GATEWAY_ARGS="--workers N" sets both).
FL_WORKERS=$(sed -n 's/.*--workers[ =]\([0-9]*\).*/\1/p' <<<"${GATEWAY_ARGS:-}")
"$FLOOR" "127.0.0.1:$FL_PORT" "http://127.0.0.1:$UP_PORT" ${FL_WORKERS:-} >"$WORK/floor.log" 2>&1 &
FL_PID=$!
PIDS+=("$FL_PID")

wait_http() { # url [model]
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d "{\"model\":\"${2:-bench}\"}" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: $1 does not answer" >&2
  cat "$WORK"/*/logs/error.log "$WORK/gateway.log" >&2 || true
  exit 1
}
A_URL="http://127.0.0.1:$UP_PORT/v1/chat/completions"
B_URL="http://127.0.0.1:$NGX_PORT/v1/chat/completions"
C_URL="http://127.0.0.1:$TG_PORT/v1/chat/completions"
D_URL="http://127.0.0.1:$FL_PORT/v1/chat/completions"
wait_http "$A_URL"; wait_http "$B_URL"; wait_http "$C_URL"; wait_http "$D_URL"

write_post_lua "$WORK/post.lua"

# $1 = url → "p50_us p99_us" at 1 connection
latency() {
  wrk -t1 -c1 -d"$WARMUP" -s "$WORK/post.lua" "$1" >/dev/null
  local out; out=$(wrk -t1 -c1 -d"$DURATION" --latency -s "$WORK/post.lua" "$1")
  check "$out" "$1"
  local p50 p99
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "$(to_us "$p50") $(to_us "$p99")"
}

# CPU ticks (user + system) of a process and its children (nginx workers).
ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# $1 = url, $2 = pid of the proxy (or empty) → "requests/s cpu_us_per_request" at $CONNS connections
throughput() {
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$WORK/post.lua" "$1" >/dev/null
  local before after out
  before=$([[ -n $2 ]] && ticks "$2" || echo 0)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$WORK/post.lua" "$1")
  after=$([[ -n $2 ]] && ticks "$2" || echo 0)
  check "$out" "$1"
  awk -v d=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /requests in/ {n = $1} /^Requests\/sec:/ {r = $2}
    END {printf "%s %.1f\n", r, (n > 0 ? d * 1000000 / hz / n : 0)}' <<<"$out"
}

# The target a URL belongs to, for error messages.
target_of() {
  case $1 in
    *":$UP_PORT/"*) echo "(a) the upstream" ;; *":$NGX_PORT/"*) echo "(b) nginx" ;;
    *":$TG_PORT/"*) echo "(c) tollgate" ;; *":$FL_PORT/"*) echo "(d) the floor" ;; *) echo "an extra" ;;
  esac
}

check() { # fail loudly on errors or non-2xx answers
  if grep -qE 'Non-2xx|Socket errors' <<<"$1"; then
    echo "error: $2 ($(target_of "$2")) had failures (machine load: $(cut -d' ' -f1-3 /proc/loadavg)):" >&2
    echo "$1" >&2
    exit 1
  fi
}

echo "measuring (${DURATION} per run, 1 connection for latency, ${CONNS} connections for throughput)..." >&2
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
declare -A R RL RR RC
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS..." >&2
  # Tollgate and the floor are measured back to back, in turns which goes first.
  order="A B C D"; if (( round % 2 == 0 )); then order="A B D C"; fi
  for t in $order; do
    url_var="${t}_URL"
    read -r p50 p99 < <(latency "${!url_var}")
    R[$t.p50]+="$p50 "; R[$t.p99]+="$p99 "; RL[$t]=$p50
  done
  for t in $order; do
    url_var="${t}_URL"
    case $t in A) pid="" ;; B) pid=$PROXY_PID ;; C) pid=$TG_PID ;; D) pid=$FL_PID ;; esac
    read -r rps cpu < <(throughput "${!url_var}" "$pid")
    R[$t.rps]+="$rps "; R[$t.cpu]+="$cpu "; RR[$t]=$rps; RC[$t]=$cpu
  done
  # This round's tollgate / floor ratios (added p50, req/s, CPU per request).
  read -r q50 qrps qcpu < <(awk -v a="${RL[A]}" -v c="${RL[C]}" -v d="${RL[D]}" -v cr="${RR[C]}" -v dr="${RR[D]}" \
    -v cc="${RC[C]}" -v dc="${RC[D]}" 'BEGIN {printf "%.3f %.3f %.3f\n", (d > a ? (c - a) / (d - a) : 0), cr / dr, (dc > 0 ? cc / dc : 0)}')
  R[q.p50]+="$q50 "; R[q.rps]+="$qrps "; R[q.cpu]+="$qcpu "
  echo "  round $round tollgate / floor: added p50 ${q50}x, req/s ${qrps}x, CPU per request ${qcpu}x" >&2
done
m() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | median; }
# Every round's value, lowest to highest.
spread() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | sort -g | paste -sd' ' -; }
A50=$(m A.p50); A99=$(m A.p99); B50=$(m B.p50); B99=$(m B.p99); C50=$(m C.p50); C99=$(m C.p99)
D50=$(m D.p50); D99=$(m D.p99)
ARPS=$(m A.rps); BRPS=$(m B.rps); CRPS=$(m C.rps); DRPS=$(m D.rps); BCPU=$(m B.cpu); CCPU=$(m C.cpu); DCPU=$(m D.cpu)

RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$TG_PID/status")
HWM_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$TG_PID/status")
OK=$(curl -fsS "http://127.0.0.1:$TG_METRICS/metrics" | awk -F' ' '/^tollgate_requests_total\{.*outcome="ok"/ {s += $2} END {print s + 0}')
NANO=$(curl -fsS "http://127.0.0.1:$TG_METRICS/metrics" | awk -F' ' '/^tollgate_cost_nanousd_total\{/ {s += $2} END {printf "%.0f", s}')

awk -v a50="$A50" -v a99="$A99" -v b50="$B50" -v b99="$B99" -v c50="$C50" -v c99="$C99" \
 -v d50="$D50" -v d99="$D99" -v drps="$DRPS" -v dcpu="$DCPU" \
    -v arps="$ARPS" -v brps="$BRPS" -v crps="$CRPS" -v rss="$RSS_KB" -v hwm="$HWM_KB" -v ok="$OK" -v nano="$NANO" \
    -v qm50="$(m q.p50)" -v qmrps="$(m q.rps)" -v qmcpu="$(m q.cpu)" -v qs50="$(spread q.p50)" -v qsrps="$(spread q.rps)" -v qscpu="$(spread q.cpu)" \
    -v cores="$(nproc)" -v dur="$DURATION" -v conns="$CONNS" -v rounds="$ROUNDS" -v bcpu="$BCPU" -v ccpu="$CCPU" 'BEGIN {
  printf "\ntollgate gateway benchmark: loopback, %s cores, wrk %s per run, median of %s rounds\n\n", cores, dur, rounds
  printf "%-22s %10s %10s %12s %12s %14s\n", "target", "p50 (us)", "p99 (us)", "added p50", "added p99", "req/s @" conns
  printf "%-22s %10.0f %10.0f %12s %12s %14.0f\n", "(a) upstream direct", a50, a99, "-", "-", arps
  printf "%-22s %10.0f %10.0f %12.0f %12.0f %14.0f\n", "(b) nginx proxy", b50, b99, b50 - a50, b99 - a99, brps
  printf "%-22s %10.0f %10.0f %12.0f %12.0f %14.0f\n", "(c) tollgate gateway", c50, c99, c50 - a50, c99 - a99, crps
  printf "%-22s %10.0f %10.0f %12.0f %12.0f %14.0f\n", "(d) floor (same stack)", d50, d99, d50 - a50, d99 - a99, drps
  nb50 = b50 - a50; nb99 = b99 - a99; nd50 = d50 - a50; nd99 = d99 - a99
  printf "\nCPU per request @%s: nginx %.1f us, tollgate %.1f us, floor %.1f us\n", conns, bcpu, ccpu, dcpu
  printf "ratios tollgate / nginx: added p50 %.2fx, added p99 %.2fx, req/s %.2fx, CPU per request %.2fx\n",
    (nb50 > 0 ? (c50 - a50) / nb50 : 0), (nb99 > 0 ? (c99 - a99) / nb99 : 0), crps / brps, (bcpu > 0 ? ccpu / bcpu : 0)
  printf "ratios tollgate / floor: added p50 %.2fx, added p99 %.2fx, req/s %.2fx, CPU per request %.2fx\n",
    (nd50 > 0 ? (c50 - a50) / nd50 : 0), (nd99 > 0 ? (c99 - a99) / nd99 : 0), crps / drps, (dcpu > 0 ? ccpu / dcpu : 0)
  printf "ratios floor / nginx:    added p50 %.2fx, added p99 %.2fx, req/s %.2fx, CPU per request %.2fx\n",
    (nb50 > 0 ? nd50 / nb50 : 0), (nb99 > 0 ? nd99 / nb99 : 0), drps / brps, (bcpu > 0 ? dcpu / bcpu : 0)
  printf "per-round tollgate / floor (measured back to back; median, then every round): added p50 %.2fx [%s], req/s %.2fx [%s], CPU per request %.2fx [%s]\n",
    qm50, qs50, qmrps, qsrps, qmcpu, qscpu
  printf "tollgate RSS after the runs: %.1f MiB (peak %.1f MiB); requests metered ok: %s; spend metered: %s nano-USD\n",
    rss / 1024, hwm / 1024, ok, nano
}'

# -------------------------------------------------------------------------------------------
# Extras (issue 16 item 4 and issue 13's admission cost), each in the same run as a baseline;
# EXTRAS=0 skips them. Added p50 at 1 connection over the direct upstream (median of ROUNDS),
# CPU per request at $CONNS connections where it says so:
#   - 100 KB request body: nginx, floor and tollgate;
#   - a 1,000-route config: tollgate serving route 500 of 1,000 against the 1-route tollgate
#     (the route lookup must not grow with the config);
#   - a Hard budget: the 1-route tollgate with its provider under a Hard ProviderBudget and an
#     allowances file granting far more than the run spends (reservation, output cap inserted
#     upstream, settlement on every request) against the same gateway without it;
#   - streaming: time to the first body byte of an SSE answer (python client, keep-alive,
#     stream with no usage requested, so tollgate also asks for usage upstream and strips it);
#   - HTTP/2 clients (h2c, prior knowledge; h2load from nghttp2-client, installed when run as
#     root): mean time per request at 1 connection, 1 stream; nginx listens with `listen ... http2`.
if [[ ${EXTRAS:-1} != 0 ]]; then
  echo "extras..." >&2
  # 100 KB body
  python3 -c 'import json; print("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = " + json.dumps(json.dumps({"model": "bench", "messages": [{"role": "user", "content": "x" * 102400}]})))' >"$WORK/post100k.lua"
  # 1,000 routes: bench-0 .. bench-999, each its own backend on the fixed upstream
  mkdir -p "$WORK/manifests-1k"
  for i in $(seq 0 999); do
    cat <<EOF
---
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: bench-$i}
spec:
  backends:
    - name: fixed
      provider: openai
      model: bench-model-$i
      endpoint: {baseUrl: "http://127.0.0.1:$UP_PORT/v1"}
      pricing: {input: "2.50", cachedInput: "1.25", output: "10.00"}
EOF
  done >"$WORK/manifests-1k/routes.yaml"
  "$TOLLGATE" render -f "$WORK/manifests-1k" >"$WORK/config-1k.json"
  K_PORT=$(free_port)
  RUST_LOG=warn "$TOLLGATE" gateway --config "$WORK/config-1k.json" --credentials-dir "$WORK/creds" \
    --listen "127.0.0.1:$K_PORT" --metrics-listen "127.0.0.1:$(free_port)" ${GATEWAY_ARGS:-} >"$WORK/gateway-1k.log" 2>&1 &
  K_PID=$!; PIDS+=("$K_PID")
  # Hard budget
  DAY=$(( $(date -u +%s) / 86400 * 86400 ))
  printf '{"namespace":"default","budgets":[{"name":"openai-hard","provider":"openai","limit":"1000000","windowStart":%s,"grants":{"bench":"1000000"}}]}\n' "$DAY" >"$WORK/allowances.json"
  H_PORT=$(free_port); H_METRICS=$(free_port)
  RUST_LOG=warn "$TOLLGATE" gateway --config "$WORK/config.json" --credentials-dir "$WORK/creds" \
    --listen "127.0.0.1:$H_PORT" --metrics-listen "127.0.0.1:$H_METRICS" --allowances "$WORK/allowances.json" --instance bench \
    ${GATEWAY_ARGS:-} >"$WORK/gateway-hard.log" 2>&1 &
  H_PID=$!; PIDS+=("$H_PID")
  # Streaming: an SSE upstream, and a route to it
  SSE_PORT=$(free_port)
  SSE_BODY='data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}\n\ndata: [DONE]\n\n'
  nginx_up sse "
  server { listen 127.0.0.1:$SSE_PORT; location / { default_type text/event-stream; return 200 '$SSE_BODY'; } }"
  NGX_SSE_PORT=$(free_port)
  nginx_up proxysse "
  upstream sse { server 127.0.0.1:$SSE_PORT; keepalive 16; }
  server { listen 127.0.0.1:$NGX_SSE_PORT; location / { proxy_pass http://sse; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"
  mkdir -p "$WORK/manifests-sse"
  sed "s/name: bench}/name: bench-sse}/; s/$UP_PORT/$SSE_PORT/" "$WORK/manifests/route.yaml" >"$WORK/manifests-sse/route.yaml"
  "$TOLLGATE" render -f "$WORK/manifests-sse" >"$WORK/config-sse.json"
  S_PORT=$(free_port)
  RUST_LOG=warn "$TOLLGATE" gateway --config "$WORK/config-sse.json" --credentials-dir "$WORK/creds" \
    --listen "127.0.0.1:$S_PORT" --metrics-listen "127.0.0.1:$(free_port)" ${GATEWAY_ARGS:-} >"$WORK/gateway-sse.log" 2>&1 &
  S_PID=$!; PIDS+=("$S_PID")
  # HTTP/2: nginx with h2c on its own port
  # (nginx 1.22 syntax: a plaintext `listen ... http2` port speaks h2c with prior knowledge only;
  # the direct baseline is the fixed body served over h2c by its own nginx server)
  NGX_H2_PORT=$(free_port); UP_H2_PORT=$(free_port)
  nginx_up upstreamh2 "
  server { listen 127.0.0.1:$UP_H2_PORT http2; location / { default_type application/json; return 200 '$BODY'; } }"
  nginx_up proxyh2 "
  upstream fixed { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server { listen 127.0.0.1:$NGX_H2_PORT http2; location / { proxy_pass http://fixed; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  K_URL="http://127.0.0.1:$K_PORT/v1/chat/completions"
  H_URL="http://127.0.0.1:$H_PORT/v1/chat/completions"
  wait_http "$K_URL" bench-500; wait_http "$H_URL"
  sed 's/"model":"bench"/"model":"bench-500"/' "$WORK/post.lua" >"$WORK/post-1k.lua"

  # $1 = url, $2 = lua script → p50 us at 1 connection
  p50_with() {
    wrk -t1 -c1 -d"$WARMUP" -s "$2" "$1" >/dev/null
    local out; out=$(wrk -t1 -c1 -d"$DURATION" --latency -s "$2" "$1")
    check "$out" "$1 with $(basename "$2")"
    to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")"
  }
  # $1 = url, $2 = pid, $3 = lua script → CPU us per request at $CONNS connections
  cpu_with() {
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$3" "$1" >/dev/null
    local before after out
    before=$(ticks "$2"); out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$3" "$1"); after=$(ticks "$2")
    check "$out" "$1"
    awk -v d=$((after - before)) -v hz="$(getconf CLK_TCK)" '/requests in/ {n = $1} END {printf "%.1f\n", (n > 0 ? d * 1000000 / hz / n : 0)}' <<<"$out"
  }
  cat >"$WORK/ttfb.py" <<'EOF'
import http.client, json, statistics, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"model": sys.argv[3], "stream": True, "messages": [{"role": "user", "content": "Say hello."}]}).encode()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
out = []
for i in range(n + 50):
    t = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    first = r.read(1)
    dt = time.perf_counter() - t
    rest = r.read()
    if r.status != 200 or not first or b"[DONE]" not in first + rest:
        sys.exit(f"bad answer {r.status}")
    if i >= 50:
        out.append(dt)
print(f"{statistics.median(out) * 1e6:.0f}")
EOF
  if ! command -v h2load >/dev/null && [[ $(id -u) == 0 ]] && need apt-get; then
    echo "installing nghttp2-client (h2load)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || true
  fi
  printf '{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"temperature":0.2}' >"$WORK/h2body.json"
  # $1 = base url → mean us per request, 1 connection, 1 stream
  h2_mean() {
    local out
    out=$(h2load -n 3000 -c 1 -m 1 -d "$WORK/h2body.json" -H 'content-type: application/json' "$1/v1/chat/completions")
    grep -q '3000 succeeded' <<<"$out" || { echo "error: h2load on $1:" >&2; echo "$out" >&2; exit 1; }
    awk '/time for request:/ {v = $6; if (v ~ /us$/) print v + 0; else if (v ~ /ms$/) print (v + 0) * 1000; else print v + 0}' <<<"$out"
  }
  declare -A X
  for round in $(seq 1 "$ROUNDS"); do
    echo "extras round $round/$ROUNDS..." >&2
    X[a100]+="$(p50_with "$A_URL" "$WORK/post100k.lua") "
    X[b100]+="$(p50_with "$B_URL" "$WORK/post100k.lua") "
    X[d100]+="$(p50_with "$D_URL" "$WORK/post100k.lua") "
    X[c100]+="$(p50_with "$C_URL" "$WORK/post100k.lua") "
    X[a1]+="$(p50_with "$A_URL" "$WORK/post.lua") "
    X[c1]+="$(p50_with "$C_URL" "$WORK/post.lua") "
    X[k1]+="$(p50_with "$K_URL" "$WORK/post-1k.lua") "
    X[h1]+="$(p50_with "$H_URL" "$WORK/post.lua") "
    X[ccpu]+="$(cpu_with "$C_URL" "$TG_PID" "$WORK/post.lua") "
    X[hcpu]+="$(cpu_with "$H_URL" "$H_PID" "$WORK/post.lua") "
    X[kcpu]+="$(cpu_with "$K_URL" "$K_PID" "$WORK/post-1k.lua") "
    X[sa]+="$(python3 "$WORK/ttfb.py" "$SSE_PORT" 500 bench) "
    X[sb]+="$(python3 "$WORK/ttfb.py" "$NGX_SSE_PORT" 500 bench) "
    X[sc]+="$(python3 "$WORK/ttfb.py" "$S_PORT" 500 bench-sse) "
    if command -v h2load >/dev/null; then
      X[ha]+="$(h2_mean "http://127.0.0.1:$UP_H2_PORT") "
      X[hb]+="$(h2_mean "http://127.0.0.1:$NGX_H2_PORT") "
      X[hc]+="$(h2_mean "http://127.0.0.1:$TG_PORT") "
      X[hd]+="$(h2_mean "http://127.0.0.1:$FL_PORT") "
    fi
  done
  x() { tr ' ' '\n' <<<"${X[$1]:-}" | grep -v '^$' | median; }
  HARD_OK=$(curl -fsS "http://127.0.0.1:$H_METRICS/metrics" | awk '/^tollgate_hard_budget_reservations_total\{.*result="admitted"/ {s += $2} END {print s + 0}')
  awk -v a100="$(x a100)" -v b100="$(x b100)" -v c100="$(x c100)" -v d100="$(x d100)" -v a1="$(x a1)" -v c1="$(x c1)" \
      -v k1="$(x k1)" -v h1="$(x h1)" -v ccpu="$(x ccpu)" -v hcpu="$(x hcpu)" -v kcpu="$(x kcpu)" -v bcpu="$BCPU" \
      -v sa="$(x sa)" -v sb="$(x sb)" -v sc="$(x sc)" -v ha="$(x ha)" -v hb="$(x hb)" -v hc="$(x hc)" -v hd="$(x hd)" \
      -v admitted="$HARD_OK" 'BEGIN {
    printf "\nextras (added p50 at 1 connection over the direct upstream, medians of rounds)\n"
    printf "100 KB request body:   nginx %.0f us, floor %.0f us, tollgate %.0f us (tollgate / nginx %.2fx, / floor %.2fx)\n",
      b100 - a100, d100 - a100, c100 - a100, (c100 - a100) / (b100 - a100), (c100 - a100) / (d100 - a100)
    printf "1,000-route config:    tollgate %.0f us vs 1 route %.0f us (%.2fx); CPU per request %.1f vs %.1f us (%.2fx)\n",
      k1 - a1, c1 - a1, (k1 - a1) / (c1 - a1), kcpu, ccpu, kcpu / ccpu
    printf "Hard budget admission: tollgate %.0f us vs without %.0f us (%.2fx); CPU per request %.1f vs %.1f us (%.2fx; %.2fx nginx, was %.2fx); %d admitted\n",
      h1 - a1, c1 - a1, (h1 - a1) / (c1 - a1), hcpu, ccpu, hcpu / ccpu, hcpu / bcpu, ccpu / bcpu, admitted
    printf "SSE first byte:        nginx %.0f us, tollgate %.0f us added (%.2fx)\n", sb - sa, sc - sa, (sb > sa ? (sc - sa) / (sb - sa) : 0)
    if (ha > 0) printf "HTTP/2 (h2c) clients:  nginx %.0f us, floor %.0f us, tollgate %.0f us added per request (tollgate / nginx %.2fx, / floor %.2fx)\n",
      hb - ha, hd - ha, hc - ha, (hc - ha) / (hb - ha), (hc - ha) / (hd - ha)
    else print "HTTP/2 (h2c) clients:  skipped (no h2load; apt-get install nghttp2-client)"
  }'
fi
