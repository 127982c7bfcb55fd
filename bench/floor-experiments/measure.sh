#!/usr/bin/env bash
# Issue 16 stack experiments (not a test): measures pass-through proxies against nginx and the
# floor (examples/floor_proxy.rs) in one run, on loopback, in front of the same fixed-body nginx
# upstream as bench/gateway.sh (`return 200` with a chat completion + usage).
#
#   bench/floor-experiments/measure.sh NAME=PATH [NAME=PATH ...]
#   ROUNDS=5 DURATION=10s bench/floor-experiments/measure.sh compio=/path/a monoio=/path/b
#   INSTR=1 bench/floor-experiments/measure.sh ...   # also user-space instructions per request
#   FLOOR_PLAIN=1 bench/floor-experiments/measure.sh ...   # also the floor's `plain` listener
#
# Each PATH is a binary taking `LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS]`, like the floor. The
# experiments live beside this script, each its own Cargo project (outside the root workspace):
#   for d in compio-hyper monoio-http actix-awc pingora; do
#     (cd bench/floor-experiments/$d && CARGO_TARGET_DIR=/work/floor-exp-target cargo build --release)
#   done
# (pingora's build needs cmake, for libz-ng-sys: apt-get install cmake.)
#
# Targets, measured in turns, ROUNDS times (medians printed, so a burst of other load skews one
# round, not one target): the upstream directly, nginx as keep-alive proxy (worker_processes
# auto), the floor, and each experiment, all with as many workers as CPUs (WORKERS to change).
# Per target and round:
#   - p50 and p99 at 1 keep-alive connection (wrk -t1 -c1, post.lua), and p50 added over the
#     direct upstream;
#   - requests/s at $CONNS connections (wrk -t$THREADS -c$CONNS);
#   - CPU per request during that run: `perf stat -e task-clock -p PIDS` over the proxy's
#     process (nginx: master and workers), divided by the requests wrk counted; the same from
#     /proc utime+stime as a cross-check (it also sees threads perf did not attach to, such as
#     io_uring workers started later).
# Once per target after the rounds (SYSCALLS=0 skips): system calls per request at 1 connection
# (perf stat -e raw_syscalls:sys_enter, for the proxy's process only), and how many of them are
# io_uring_enter.
# With INSTR=1: user-space instructions per request under callgrind, as bench/instructions.sh
# counts them: each proxy with one worker (nginx: master_process off, worker_processes 1) run
# twice, N0 and N1 requests on one keep-alive connection (python http.client), and
# (I(N1) - I(N0)) / (N1 - N0). valgrind 3.19 holds its thread lock through io_uring_enter, so an
# io_uring binary acts on the stop signal only once a connection wakes it (done below); the
# monoio-http experiment runs its first worker on the main thread for the same reason.
#
# Needs wrk, nginx, perf, python3 (and valgrind with INSTR=1). Does not build anything.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# BODY, write_post_lua, to_us, write_callgrind_client, free_port, nginx_conf
source "$HERE/../common.sh"
ROOT=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
N0=${N0:-200}
N1=${N1:-1200}
FLOOR=${FLOOR:-$ROOT/target/release/examples/floor_proxy}
NGINX=$(command -v nginx)

for c in wrk nginx perf python3; do
  command -v "$c" >/dev/null || { echo "error: needs $c" >&2; exit 1; }
done
[[ -x $FLOOR ]] || { echo "error: no floor binary at $FLOOR (cargo build --release --example floor_proxy)" >&2; exit 1; }
NAMES=(nginx floor)
declare -A BIN EXTRA
# FLOOR_PLAIN=1 adds the floor's `plain` listener (hyper served directly, no connection cap, no
# watchdog) as a target: the like-for-like baseline for a proxy that has none of those either.
if [[ ${FLOOR_PLAIN:-0} != 0 ]]; then
  NAMES+=(floor-plain)
  BIN[floor-plain]=$FLOOR
  EXTRA[floor-plain]=plain
fi
for arg in "$@"; do
  name=${arg%%=*} path=${arg#*=}
  [[ $name != "$arg" && -x $path ]] || { echo "error: want NAME=PATH to an executable, got $arg" >&2; exit 1; }
  NAMES+=("$name")
  BIN[$name]=$path
done

WORK=$(mktemp -d -t floor-exp.XXXXXX)
PIDS=()
cleanup() {
  # TERM, then KILL what is still there a second later (pingora takes SIGTERM as a graceful
  # shutdown that waits minutes).
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

nginx_proxy_block() { # $1 = listen port
  echo "
  upstream fixed { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$1;
    location / { proxy_pass http://fixed; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }
  }"
}

# The upstream and the targets.
UP_PORT=$(free_port)
nginx_conf "$WORK/upstream" "worker_processes auto;" "
  server { listen 127.0.0.1:$UP_PORT; location / { default_type application/json; return 200 '$BODY'; } }"
"$NGINX" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" &
PIDS+=($!)

declare -A PORT PID
PORT[direct]=$UP_PORT # "direct" is the upstream itself
PORT[nginx]=$(free_port)
nginx_conf "$WORK/nginx" "worker_processes $WORKERS;" "$(nginx_proxy_block "${PORT[nginx]}")"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PID[nginx]=$!
PIDS+=($!)
BIN[floor]=$FLOOR
for name in "${NAMES[@]}"; do
  [[ $name == nginx ]] && continue
  PORT[$name]=$(free_port)
  "${BIN[$name]}" "127.0.0.1:${PORT[$name]}" "http://127.0.0.1:$UP_PORT" "$WORKERS" ${EXTRA[$name]:-} >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=($!)
done

url() { echo "http://127.0.0.1:${PORT[$1]}/v1/chat/completions"; }
wait_http() { # name
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d '{"model":"bench"}' "$(url "$1")" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: $1 does not answer" >&2
  cat "$WORK/$1.log" >&2 2>/dev/null || true
  exit 1
}
for name in direct "${NAMES[@]}"; do wait_http "$name"; done
# Every target must give back the upstream's body byte for byte.
for name in "${NAMES[@]}"; do
  got=$(curl -fsS -X POST -H 'content-type: application/json' -d '{"model":"bench"}' "$(url "$name")")
  [[ $got == "$BODY" ]] || { echo "error: $name answered a different body: $got" >&2; exit 1; }
done

write_post_lua "$WORK/post.lua"

check() { # wrk output, label
  if grep -qE 'Non-2xx|Socket errors' <<<"$1"; then echo "error: $2: wrk saw errors:" >&2; echo "$1" >&2; exit 1; fi
}
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# The pids to count for a target: the process (all its threads) and its children (nginx workers).
pids_of() { local p=${PID[$1]}; echo "$p$(pgrep -P "$p" | sed 's/^/,/' | tr -d '\n')"; }
ticks() { # comma-separated pids → utime + stime ticks
  local t=0 p
  for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}

# $1 = name → "p50_us p99_us"
latency() {
  wrk -t1 -c1 -d"$WARMUP" -s "$WORK/post.lua" "$(url "$1")" >/dev/null
  local out; out=$(wrk -t1 -c1 -d"$DURATION" --latency -s "$WORK/post.lua" "$(url "$1")")
  check "$out" "$1 at 1 connection"
  echo "$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}

# $1 = name → "requests/s cpu_us_per_request(perf) cpu_us_per_request(/proc)" at $CONNS connections
throughput() {
  local u; u=$(url "$1")
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$WORK/post.lua" "$u" >/dev/null
  if [[ $1 == direct ]]; then
    local out; out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$WORK/post.lua" "$u")
    check "$out" "$1"
    awk '/^Requests\/sec/ {print $2, 0, 0}' <<<"$out"
    return
  fi
  local pids before after out perfpid
  pids=$(pids_of "$1")
  before=$(ticks "$pids")
  perf stat -x, -e task-clock -p "$pids" -o "$WORK/perf.$1" &
  perfpid=$!
  sleep 0.2
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$WORK/post.lua" "$u")
  kill -INT "$perfpid"
  wait "$perfpid" 2>/dev/null || true
  after=$(ticks "$pids")
  check "$out" "$1 at $CONNS connections"
  local msec; msec=$(awk -F, '$3 == "task-clock" {print $1}' "$WORK/perf.$1")
  awk -v ms="${msec:-0}" -v d=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /requests in/ {n = $1} /^Requests\/sec/ {r = $2}
    END {printf "%s %.2f %.2f\n", r, (n > 0 ? ms * 1000 / n : 0), (n > 0 ? d * 1000000 / hz / n : 0)}' <<<"$out"
}

# $1 = name → "syscalls_per_request io_uring_enter_per_request" at 1 connection
syscalls() {
  local u pids out perfpid; u=$(url "$1"); pids=$(pids_of "$1")
  perf stat -x, -e raw_syscalls:sys_enter -e 'syscalls:sys_enter_io_uring_enter' -p "$pids" -o "$WORK/sys.$1" &
  perfpid=$!
  sleep 0.2
  out=$(wrk -t1 -c1 -d2s -s "$WORK/post.lua" "$u")
  kill -INT "$perfpid"
  wait "$perfpid" 2>/dev/null || true
  check "$out" "$1 syscalls"
  awk -F, -v n="$(awk '/requests in/ {print $1}' <<<"$out")" '
    $3 == "raw_syscalls:sys_enter" {s = $1} $3 == "syscalls:sys_enter_io_uring_enter" {u = $1}
    END {printf "%.2f %.2f\n", (n > 0 ? s / n : 0), (n > 0 ? u / n : 0)}' "$WORK/sys.$1"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average before: $LOAD_BEFORE" >&2
declare -A P50 P99 RPS CPU CPUP SYS URING INS
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS..." >&2
  for name in direct "${NAMES[@]}"; do
    read -r a b <<<"$(latency "$name")"
    P50[$name]+="$a "; P99[$name]+="$b "
    read -r a b c <<<"$(throughput "$name")"
    RPS[$name]+="$a "; CPU[$name]+="$b "; CPUP[$name]+="$c "
  done
done
if [[ ${SYSCALLS:-1} != 0 ]]; then
  echo "syscalls per request..." >&2
  for name in "${NAMES[@]}"; do read -r a b <<<"$(syscalls "$name")"; SYS[$name]=$a; URING[$name]=$b; done
fi
# Streaming check (STREAM=0 skips): an upstream (python) that answers chunked, sends the first
# event, waits 500 ms, then sends the rest; each proxy gets its own 1-worker instance in front of
# it, and the time to the answer's first body byte says whether the proxy streams (well under
# 500 ms; about 40 ms here, the python upstream's own Nagle/delayed-ACK wait, for nginx too) or
# buffers the answer whole (about 500 ms).
if [[ ${STREAM:-1} != 0 ]]; then
  echo "streaming check..." >&2
  cat >"$WORK/slow.py" <<'PY'
import http.server, socketserver, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part, pause in ((b"data: first\n\n", 0.5), (b"data: [DONE]\n\n", 0)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part)); self.wfile.flush(); time.sleep(pause)
        self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  cat >"$WORK/ttfb.py" <<'PY'
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for _ in range(2):  # the second on a kept-alive connection
    t = time.perf_counter()
    c.request("POST", "/v1/chat/completions", b'{"stream":true}', {"Content-Type": "application/json"})
    r = c.getresponse(); first = r.read(1); ttfb = time.perf_counter() - t; rest = r.read()
    if r.status != 200 or b"[DONE]" not in first + rest: sys.exit(f"bad answer {r.status} {first + rest!r}")
print(f"{ttfb * 1000:.0f}")
PY
  SLOW_PORT=$(free_port)
  python3 "$WORK/slow.py" "$SLOW_PORT" &
  PIDS+=($!)
  declare -A SPORT TTFB
  for name in "${NAMES[@]}"; do
    SPORT[$name]=$(free_port)
    if [[ $name == nginx ]]; then
      nginx_conf "$WORK/nginx-sse" "worker_processes 1;" "
  upstream slow { server 127.0.0.1:$SLOW_PORT; keepalive 16; }
  server { listen 127.0.0.1:${SPORT[$name]}; location / { proxy_pass http://slow; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"
      "$NGINX" -p "$WORK/nginx-sse" -c "$WORK/nginx-sse/nginx.conf" &
    else
      "${BIN[$name]}" "127.0.0.1:${SPORT[$name]}" "http://127.0.0.1:$SLOW_PORT" 1 ${EXTRA[$name]:-} >"$WORK/$name-sse.log" 2>&1 &
    fi
    PIDS+=($!)
  done
  sleep 1
  for name in "${NAMES[@]}"; do TTFB[$name]=$(python3 "$WORK/ttfb.py" "${SPORT[$name]}" 2>&1 | tail -1); done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Instructions under callgrind (INSTR=1).
if [[ ${INSTR:-0} != 0 ]]; then
  command -v valgrind >/dev/null || { echo "error: INSTR=1 needs valgrind" >&2; exit 1; }
  write_callgrind_client "$WORK/client.py"
  count() { # $1 = name, $2 = requests → instructions of the proxy process (all threads)
    local name=$1 n=$2 port out="$WORK/cg.$1.$2" pid
    port=$(free_port)
    if [[ $name == nginx ]]; then
      local d="$WORK/cg-nginx-$n"
      nginx_conf "$d" "master_process off; worker_processes 1;" "$(nginx_proxy_block "$port")"
      valgrind --tool=callgrind --callgrind-out-file="$out" "$NGINX" -p "$d" -c "$d/nginx.conf" 2>"$out.log" &
    else
      valgrind --tool=callgrind --callgrind-out-file="$out" "${BIN[$name]}" "127.0.0.1:$port" "http://127.0.0.1:$UP_PORT" 1 \
        ${EXTRA[$name]:-} 2>"$out.log" >/dev/null &
    fi
    pid=$!
    if ! python3 "$WORK/client.py" "$port" "$n" >&2; then
      echo "warning: $name under callgrind failed; its log:" >&2; tail -5 "$out.log" >&2
    fi
    # valgrind acts on a signal only when the thread that holds its lock comes back from a system
    # call, and it does not see io_uring_enter as one that blocks: a connection after each signal
    # wakes an io_uring runtime (the same extra work in both runs, so it cancels out).
    kill -INT "$pid" 2>/dev/null || true
    sleep 0.5
    curl -s -m 1 -o /dev/null -X POST "http://127.0.0.1:$port/" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    curl -s -m 1 -o /dev/null -X POST "http://127.0.0.1:$port/" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    awk '/^summary:/ {s += $2} END {print s + 0}' "$out"* 2>/dev/null
  }
  for name in "${NAMES[@]}"; do
    echo "counting $name ($N0 and $N1 requests under callgrind)..." >&2
    i0=$(count "$name" "$N0")
    i1=$(count "$name" "$N1")
    INS[$name]=$(awk -v a="$i0" -v b="$i1" -v n0="$N0" -v n1="$N1" 'BEGIN {printf "%.0f", (a > 0 && b > 0 ? (b - a) / (n1 - n0) : 0)}')
  done
fi

m() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
A50=$(m "${P50[direct]}")
printf '\n%s rounds of %s, %s worker(s) per proxy, %s connections for req/s; load average %s before, %s after\n' \
  "$ROUNDS" "$DURATION" "$WORKERS" "$CONNS" "$LOAD_BEFORE" "$LOAD_AFTER"
printf '%-14s %8s %8s %9s %9s %10s %10s %9s %8s %10s\n' target "p50 us" "p99 us" "+p50 us" "req/s" "CPU us/r" "(/proc)" "sys/req" "uring/r" "instr/req"
{
  printf '%s %s %s %s %s %s %s %s %s %s\n' direct "$A50" "$(m "${P99[direct]}")" 0 "$(m "${RPS[direct]}")" 0 0 - - -
  for name in "${NAMES[@]}"; do
    printf '%s %s %s %s %s %s %s %s %s %s\n' "$name" "$(m "${P50[$name]}")" "$(m "${P99[$name]}")" \
      "$(awk -v a="$(m "${P50[$name]}")" -v b="$A50" 'BEGIN {print a - b}')" "$(m "${RPS[$name]}")" \
      "$(m "${CPU[$name]}")" "$(m "${CPUP[$name]}")" "${SYS[$name]:--}" "${URING[$name]:--}" "${INS[$name]:--}"
  done
} >"$WORK/table"
awk '{printf "%-14s %8.0f %8.0f %9.0f %9.0f %10.2f %10.2f %9s %8s %10s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}' "$WORK/table"

ratios() { # $1 = reference row name
  awk -v ref="$1" '
    {r[$1] = $0; add[$1] = $4; rps[$1] = $5; cpu[$1] = $6; ins[$1] = $10; order[NR] = $1}
    END {
      printf "\nratios against %s (added p50, req/s, CPU per request (perf), instructions per request)\n", ref
      for (i = 1; i <= NR; i++) {
        n = order[i]; if (n == "direct" || n == ref) continue
        printf "%-14s +p50 %5.2fx  req/s %5.2fx  CPU/req %5.2fx  instr %s\n", n,
          (add[ref] > 0 ? add[n] / add[ref] : 0), (rps[ref] > 0 ? rps[n] / rps[ref] : 0),
          (cpu[ref] > 0 ? cpu[n] / cpu[ref] : 0),
          (ins[ref] + 0 > 0 && ins[n] + 0 > 0 ? sprintf("%5.2fx", ins[n] / ins[ref]) : "-")
      }
    }' "$WORK/table"
}
ratios nginx
ratios floor
if [[ ${STREAM:-1} != 0 ]]; then
  printf '\nstreaming: ms to the first body byte of a chunked answer whose last chunk comes 500 ms after the first\n(well under 500: streams (about 40 here, nginx too: the python upstream waits on Nagle/delayed ACK); about 500: buffers the answer)\n'
  for name in "${NAMES[@]}"; do printf '%-14s %s\n' "$name" "${TTFB[$name]}"; done
fi
