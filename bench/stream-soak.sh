#!/usr/bin/env bash
# Streaming soak (not a test, not run in CI): `tollgate gateway` (release build) in front of a
# paced SSE upstream on loopback (bench/soak: sse-upstream, hand-written HTTP/1.1 that counts
# the streams it wrote in full), driven by CONCURRENCY streaming clients (bench/soak:
# stream-client, one keep-alive connection each) for DURATION seconds, HANGUP_PCT percent of
# the streams hanging up mid-stream (the client closes its connection after a random number of
# content events). Every SAMPLE seconds it prints the gateway's RSS and open descriptors
# (/proc/PID/status, /proc/PID/fd) beside the client's and the upstream's counts; after the
# clients leave it waits (at most SETTLE seconds) for the descriptors to come back to the
# baseline taken before the first request (the gateway's upstream pool keeps idle connections
# up to its 90 s idle timeout; the upstream never closes them), then prints the totals and
# PASS/FAIL lines for:
#   - no stream errors: every stream the client finished was checked whole (status, content
#     events, finish, [DONE], usage exactly when asked, with the upstream's counts);
#   - every stream reached the upstream once, and the upstream wrote every one of them in full
#     (the gateway drains a hung-up stream for its usage, so none is aborted);
#   - descriptors back to the baseline;
#   - RSS after the clients left within RSS_BOUND_MIB of the RSS before the first request (a
#     per-stream leak of L bytes would add L × streams);
#   - exact cost: tollgate_cost_nanousd_total against the cost computed here, in integers, from
#     the streams the upstream wrote in full × the per-stream usage × the route's prices, and the
#     token counters against the same counts; no usage_missing, no estimate. A hung-up stream is
#     billed like a finished one (README, "Spend when the client leaves": the gateway reads on
#     for the usage), and that share is checked too.
#
#   bench/stream-soak.sh                               # 2,000 streams for 300 s (about 8 minutes)
#   DURATION=20 CONCURRENCY=200 bench/stream-soak.sh   # a short trial
#   CHUNKS=20 INTERVAL_MS=250 HANGUP_PCT=10 bench/stream-soak.sh   # the stream shape (defaults)
#   GATEWAY_ARGS="--workers 1" bench/stream-soak.sh    # extra flags for `tollgate gateway`
#   NO_BUILD=1 TOLLGATE=/path/tollgate bench/stream-soak.sh
#   MIMALLOC_PURGE_DELAY=0 bench/stream-soak.sh        # the allocator returns freed pages at once
#   GATEWAY_ARGS="--upstream-idle-timeout 5s" bench/stream-soak.sh   # descriptors settle sooner
#
# Needs curl and python3 (to read the client's JSON); builds target/release/tollgate and
# bench/soak (its own Cargo project, outside the workspace; BENCH_TARGET sets its target dir).
set -euo pipefail
cd "$(dirname "$0")/.."
# free_port, build_stream_bench, bench_workdir, micro_of, proc_rss_kib, proc_fds
source bench/common.sh

DURATION=${DURATION:-300}
CONCURRENCY=${CONCURRENCY:-2000}
HANGUP_PCT=${HANGUP_PCT:-10}
CHUNKS=${CHUNKS:-20}
INTERVAL_MS=${INTERVAL_MS:-250}
SAMPLE=${SAMPLE:-10}
SETTLE=${SETTLE:-240}
RSS_BOUND_MIB=${RSS_BOUND_MIB:-32}
CLIENT_THREADS=${CLIENT_THREADS:-1}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
# Usage of every stream (OpenAI shape: cached ⊂ prompt, reasoning ⊂ completion) and the route's
# prices in USD per million tokens.
PROMPT=1234 CACHED=234 REASONING=7
P_INPUT=2.50 P_CACHED=1.25 P_OUTPUT=10.00 P_REASONING=12.345678

for c in curl python3; do
  command -v "$c" >/dev/null || { echo "error: needs $c" >&2; exit 1; }
done

# Descriptors: the gateway holds one per client connection and one per upstream connection; the
# client and the upstream one per connection each (this shell's limit is inherited by all three).
NEED_FDS=$((CONCURRENCY * 2 + 1024))
if (( $(ulimit -n) < NEED_FDS )); then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
if (( $(ulimit -n) < NEED_FDS )); then
  echo "error: open-file limit $(ulimit -n) is below the $NEED_FDS this run needs (ulimit -Hn: $(ulimit -Hn))" >&2
  exit 1
fi

build_stream_bench

bench_workdir soak

UP_PORT=$(free_port)
TG_PORT=$(free_port)
TG_METRICS=$(free_port)

"$SSE_UPSTREAM" "listen=127.0.0.1:$UP_PORT" "chunks=$CHUNKS" "interval_ms=$INTERVAL_MS" \
  "prompt=$PROMPT" "cached=$CACHED" "reasoning=$REASONING" "threads=$UPSTREAM_THREADS" >"$WORK/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")

start_gateway_route soak sse soak-model "{input: \"$P_INPUT\", cachedInput: \"$P_CACHED\", output: \"$P_OUTPUT\", reasoning: \"$P_REASONING\"}"

# Ready without a chat request: the baseline has no upstream connection in the gateway's pool.
for i in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$TG_PORT/readyz" 2>/dev/null \
    && curl -fsS -o /dev/null "http://127.0.0.1:$UP_PORT/stats" 2>/dev/null; then break; fi
  if (( i == 100 )); then echo "error: the gateway or the upstream does not answer" >&2; cat "$WORK"/*.log >&2; exit 1; fi
  sleep 0.1
done
sleep 1
FD0=$(proc_fds "$TG_PID")
RSS0=$(proc_rss_kib "$TG_PID")

up_stat() { curl -fsS "http://127.0.0.1:$UP_PORT/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo "soak: $CONCURRENCY streams for ${DURATION}s, $HANGUP_PCT% hang up; each stream $CHUNKS content events ${INTERVAL_MS} ms apart; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gateway before the first request: RSS $((RSS0 / 1024)) MiB, $FD0 descriptors"
printf '%6s %9s %6s %8s %9s %10s %8s %7s %10s\n' "t (s)" "RSS (MiB)" "fds" "active" "started" "completed" "hung up" "errors" "up active"

"$STREAM_CLIENT" "addr=127.0.0.1:$TG_PORT" model=soak "concurrency=$CONCURRENCY" "duration=$DURATION" \
  "hangup_pct=$HANGUP_PCT" "chunks=$CHUNKS" "prompt=$PROMPT" "cached=$CACHED" "reasoning=$REASONING" \
  usage=mixed ramp=5 progress=1 "threads=$CLIENT_THREADS" >"$WORK/client.json" 2>"$WORK/client.log" &
CL_PID=$!
PIDS+=("$CL_PID")

START=$(date +%s)
RSS_PEAK=$RSS0
RSS_THIRD=""
RSS_LOADED=$RSS0
sample() { # $1 = phase: prints one row; tracks the peak
  local rss fds t prog active started completed hung errors
  rss=$(proc_rss_kib "$TG_PID"); fds=$(proc_fds "$TG_PID"); t=$(( $(date +%s) - START ))
  (( rss > RSS_PEAK )) && RSS_PEAK=$rss
  prog=$(grep '^t=' "$WORK/client.log" | tail -1 || true)
  read -r active started completed hung errors < <(awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    print v["active"] + 0, v["started"] + 0, v["completed"] + 0, v["hung_up"] + 0, v["errors"] + 0 }' <<<"${prog:-x=0}")
  if [[ $1 == settle ]]; then active=-; started=-; completed=-; hung=-; errors=-; fi
  printf '%6s %9.1f %6s %8s %9s %10s %8s %7s %10s\n' "$t" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$fds" \
    "$active" "$started" "$completed" "$hung" "$errors" "$(up_stat active)"
  LAST_RSS=$rss; LAST_FDS=$fds
}
next=$((START + SAMPLE))
while kill -0 "$CL_PID" 2>/dev/null; do
  if (( $(date +%s) >= next )); then
    sample load
    next=$((next + SAMPLE))
    if [[ -z $RSS_THIRD ]] && (( $(date +%s) - START >= DURATION / 3 )); then RSS_THIRD=$LAST_RSS; fi
    if (( $(date +%s) - START < DURATION )); then RSS_LOADED=$LAST_RSS; fi
  fi
  sleep 0.5
done
wait "$CL_PID" || { echo "error: the client failed:" >&2; cat "$WORK/client.log" >&2; exit 1; }
echo "clients left after $(( $(date +%s) - START )) s; waiting for the upstream's last streams and the gateway's descriptors (at most ${SETTLE}s)..."

# Hung-up streams still draining end within one stream's length; then the descriptors.
for _ in $(seq 1 120); do (( $(up_stat active) == 0 )) && break; sleep 0.5; done
SETTLE_START=$(date +%s)
next=$SETTLE_START
while :; do
  FDS_NOW=$(proc_fds "$TG_PID")
  (( FDS_NOW <= FD0 )) && break
  (( $(date +%s) - SETTLE_START >= SETTLE )) && break
  if (( $(date +%s) >= next )); then sample settle; next=$((next + SAMPLE)); fi
  sleep 1
done
SETTLED_AFTER=$(( $(date +%s) - SETTLE_START ))
sleep 1
FD_END=$(proc_fds "$TG_PID")
RSS_END=$(proc_rss_kib "$TG_PID")
HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$TG_PID/status")
(( HWM > RSS_PEAK )) && RSS_PEAK=$HWM

# --- totals -------------------------------------------------------------------------------
read -r C_STARTED C_COMPLETED C_HUNG C_ERRORS C_RECONNECTS C_EVENTS C_MS_MEAN C_MS_MAX C_KINDS < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
kinds = ",".join(f"{k}={v}" for k, v in j["errors_by_kind"].items() if v) or "none"
print(j["started"], j["completed"], j["hung_up"], j["errors"], j["reconnects"], j["events"], j["stream_ms_mean"], j["stream_ms_max"], kinds)
' "$WORK/client.json")
read -r U_STARTED U_COMPLETED U_ABORTED U_USAGE_REQ U_BAD < <(curl -fsS "http://127.0.0.1:$UP_PORT/stats" |
  python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["started"], j["completed"], j["aborted"], j["usage_requested"], j["bad_requests"])')

METRICS=$(curl -fsS "http://127.0.0.1:$TG_METRICS/metrics")
# Integer sums of one family's series (values are integers: exact u64 counters).
msum() { # $1 = family, $2 = extra label filter (regex) or empty
  local s=0 v
  while read -r v; do s=$((s + v)); done < <(grep -E "^$1\{" <<<"$METRICS" | grep -E -- "${2:-.}" | awk '{print $NF}')
  echo "$s"
}
M_COST=$(msum tollgate_cost_nanousd_total)
M_EST=$(msum tollgate_cost_estimated_nanousd_total)
M_MISSING=$(msum tollgate_usage_missing_total)
M_OK=$(msum tollgate_requests_total 'outcome="ok"')
M_IN=$(msum tollgate_tokens_total 'kind="input"')
M_CACHED=$(msum tollgate_tokens_total 'kind="cached_input"')
M_OUT=$(msum tollgate_tokens_total 'kind="output"')
M_REASON=$(msum tollgate_tokens_total 'kind="reasoning"')
OUTCOMES=$(grep -E '^tollgate_requests_total\{' <<<"$METRICS" | sed -E 's/.*outcome="([^"]*)".* ([0-9]+)$/\1=\2/' | paste -sd' ' -)
MISSING_BY=$(grep -E '^tollgate_usage_missing_total\{' <<<"$METRICS" | sed -E 's/.*reason="([^"]*)".* ([0-9]+)$/\1=\2/' | paste -sd' ' - || true)

# The independent cost: pico-USD per token = USD per million tokens × 10^6 (micro_of), per
# stream the four disjoint kinds, the metric is floor(total pico-USD / 1000).
PICO_STREAM=$(( (PROMPT - CACHED) * $(micro_of "$P_INPUT") + CACHED * $(micro_of "$P_CACHED") \
  + CHUNKS * $(micro_of "$P_OUTPUT") + REASONING * $(micro_of "$P_REASONING") ))
EXPECT_NANO=$(( U_COMPLETED * PICO_STREAM / 1000 ))
CLIENT_NANO=$(( (C_COMPLETED + C_HUNG) * PICO_STREAM / 1000 ))
HUNG_NANO=$(( C_HUNG * PICO_STREAM / 1000 ))

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
echo
echo "streams: $C_STARTED started by the clients, $C_COMPLETED completed, $C_HUNG hung up, $C_ERRORS errors ($C_KINDS), $C_RECONNECTS reconnects"
echo "         $C_EVENTS SSE events received; completed streams took $C_MS_MEAN ms on average, $C_MS_MAX ms at most (paced: $((CHUNKS * INTERVAL_MS)) ms)"
echo "upstream: $U_STARTED streams started, $U_COMPLETED written in full, $U_ABORTED aborted; $U_USAGE_REQ asked for usage (all should: the gateway asks); $U_BAD bad requests"
echo "gateway RSS: start $(mib "$RSS0") MiB, at a third of the run $(mib "${RSS_THIRD:-$RSS0}") MiB, last sample under load $(mib "$RSS_LOADED") MiB, peak $(mib "$RSS_PEAK") MiB, end $(mib "$RSS_END") MiB"
echo "gateway descriptors: start $FD0, end $FD_END (waited ${SETTLED_AFTER}s after the upstream went idle)"
echo "metered: outcomes $OUTCOMES; usage_missing $M_MISSING${MISSING_BY:+ ($MISSING_BY)}; estimated $M_EST nano-USD"
echo "tokens metered: input $M_IN, cached_input $M_CACHED, output $M_OUT, reasoning $M_REASON"
echo "cost: metered $M_COST nano-USD; computed from the upstream's $U_COMPLETED full streams × $PICO_STREAM pico-USD = $EXPECT_NANO nano-USD"
echo "hung-up streams: billed like finished ones (the gateway reads the upstream on for its usage): $C_HUNG × $PICO_STREAM pico-USD = $HUNG_NANO nano-USD of the total; (completed + hung up) × per stream = $CLIENT_NANO nano-USD"
echo

FAILS=0
verdict() { # $1 = condition (0/1), $2 = text
  if [[ $1 == 1 ]]; then echo "PASS $2"; else echo "FAIL $2"; FAILS=$((FAILS + 1)); fi
}
b() { if eval "$1"; then echo 1; else echo 0; fi; }
verdict "$(b "(( C_ERRORS == 0 && C_STARTED > 0 ))")" "no stream errors ($C_ERRORS of $C_STARTED)"
verdict "$(b "(( U_STARTED == C_STARTED && U_COMPLETED == C_COMPLETED + C_HUNG && U_ABORTED == 0 ))")" \
  "every stream reached the upstream once and was written in full (upstream $U_STARTED started, $U_COMPLETED full, $U_ABORTED aborted; clients $C_STARTED started, $((C_COMPLETED + C_HUNG)) completed or hung up)"
verdict "$(b "(( FD_END <= FD0 ))")" "descriptors back to the baseline ($FD0 before, $FD_END after)"
verdict "$(b "(( RSS_END <= RSS0 + RSS_BOUND_MIB * 1024 ))")" \
  "RSS after the clients left within ${RSS_BOUND_MIB} MiB of the start ($(mib "$RSS0") -> $(mib "$RSS_END") MiB over $C_STARTED streams: $(( (RSS_END - RSS0) * 1024 / (C_STARTED > 0 ? C_STARTED : 1) )) bytes per stream if all of it stayed)"
verdict "$(b "(( M_COST == EXPECT_NANO && M_COST == CLIENT_NANO && M_MISSING == 0 && M_EST == 0 && M_OK == U_COMPLETED ))")" \
  "cost exact ($M_COST metered, $EXPECT_NANO computed; $M_OK ok outcomes for $U_COMPLETED full streams)"
verdict "$(b "(( M_IN == U_COMPLETED * (PROMPT - CACHED) && M_CACHED == U_COMPLETED * CACHED && M_OUT == U_COMPLETED * CHUNKS && M_REASON == U_COMPLETED * REASONING ))")" \
  "tokens exact (input $M_IN, cached $M_CACHED, output $M_OUT, reasoning $M_REASON for $U_COMPLETED streams)"
if grep -qiE 'panic|error' "$WORK/gateway.log"; then
  echo "gateway log (warn and above):"; grep -iE 'panic|error' "$WORK/gateway.log" | sort | uniq -c | sort -rn | head -10
fi
exit $(( FAILS > 0 ))
