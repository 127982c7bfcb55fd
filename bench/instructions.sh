#!/usr/bin/env bash
# User-space instructions per proxied request (not a test), counted by valgrind's callgrind:
# repeatable whatever else the machine is doing (wall-clock figures on a shared 2-core machine
# are not). For each proxy — nginx (one worker, no master), the floor (examples/floor_proxy.rs,
# one worker thread) and `tollgate gateway --workers 1` — in front of the same fixed-body nginx
# upstream, it runs the proxy under callgrind twice: once with N0 requests and once with N1, on
# one keep-alive connection, and prints (I(N1) - I(N0)) / (N1 - N0): start-up, config loading
# and shutdown cancel out. Kernel time (syscalls, wake-ups) is not counted: bench/gateway.sh
# measures that.
#
#   bench/instructions.sh               # N0=200 N1=1200, about 2 minutes
#   N0=100 N1=600 bench/instructions.sh
#   ANNOTATE=1 bench/instructions.sh    # also prints tollgate's top functions (inclusive), both rows
#   NO_BUILD=1 TOLLGATE=/path/a FLOOR=/path/b bench/instructions.sh   # count given binaries
#   KEEP=1 bench/instructions.sh        # keep the callgrind files (for callgrind_annotate)
#
# A fourth row, "tollgate, Hard budget", runs the same gateway with the route's provider under
# a Hard ProviderBudget (issue 13) and an allowances file granting it far more than the run
# spends: every request is admitted by reservation, gets the output cap inserted and is
# settled, so the row minus the plain tollgate row is what admission costs per request.
#
# Needs valgrind, nginx and python3 (the client); builds target/release/{tollgate,floor_proxy}.
set -euo pipefail
cd "$(dirname "$0")/.."
# BODY, write_callgrind_client, free_port, nginx_conf, bench_workdir
source bench/common.sh
N0=${N0:-200}
N1=${N1:-1200}

for c in valgrind nginx python3; do
  command -v "$c" >/dev/null || { echo "error: needs $c (Debian: valgrind nginx-light)" >&2; exit 1; }
done
if [[ -z ${NO_BUILD:-} ]]; then
  echo "building release binaries..." >&2
  cargo build -q --release --bin tollgate --example floor_proxy
fi
TOLLGATE=${TOLLGATE:-$PWD/target/release/tollgate}
FLOOR=${FLOOR:-$PWD/target/release/examples/floor_proxy}
NGINX=$(command -v nginx)

KEEP_WORK=${KEEP:+callgrind files}
bench_workdir instr

UP_PORT=$(free_port)
nginx_conf "$WORK/upstream" "worker_processes 1;" "
  server { listen 127.0.0.1:$UP_PORT; location / { default_type application/json; return 200 '$BODY'; } }"
"$NGINX" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" &
PIDS+=($!)

# The client: N requests on one keep-alive connection, each answer read whole; waits for the
# proxy to answer first (under valgrind it starts slowly). Exits non-zero on any non-200.
write_callgrind_client "$WORK/client.py"

mkdir -p "$WORK/manifests" "$WORK/creds"
cat >"$WORK/manifests/route.yaml" <<EOF
apiVersion: tollgate.dev/v1alpha1
kind: ModelRoute
metadata: {name: bench}
spec:
  backends:
    - name: fixed
      provider: openai
      model: bench-model
      endpoint: {baseUrl: "http://127.0.0.1:$UP_PORT/v1"}
      pricing: {input: "2.50", cachedInput: "1.25", output: "10.00"}
EOF
"$TOLLGATE" render -f "$WORK/manifests" >"$WORK/config.json"
# The Hard row: a grant of $1,000,000 for instance "bench" in today's UTC day window.
DAY=$(( $(date -u +%s) / 86400 * 86400 ))
cat >"$WORK/allowances.json" <<EOF
{"namespace":"default","budgets":[{"name":"openai-hard","provider":"openai","limit":"1000000",
 "windowStart":$DAY,"grants":{"bench":"1000000"}}]}
EOF

# $1 = target name, $2 = requests → total instructions of the proxy process (all threads)
count() {
  local name=$1 n=$2 port out="$WORK/cg.$1.$2" pid
  port=$(free_port)
  case $name in
    nginx)
      local d="$WORK/nginx-$n-$port"
      nginx_conf "$d" "master_process off; worker_processes 1;" "
  upstream fixed { server 127.0.0.1:$UP_PORT; keepalive 16; }
  server { listen 127.0.0.1:$port; location / { proxy_pass http://fixed; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
      valgrind --tool=callgrind --callgrind-out-file="$out" "$NGINX" -p "$d" -c "$d/nginx.conf" 2>"$out.log" &
      ;;
    floor)
      valgrind --tool=callgrind --callgrind-out-file="$out" "$FLOOR" "127.0.0.1:$port" "http://127.0.0.1:$UP_PORT" 1 2>"$out.log" &
      ;;
    tollgate)
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$TOLLGATE" gateway --config "$WORK/config.json" \
        --credentials-dir "$WORK/creds" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" --workers 1 \
        2>"$out.log" >/dev/null &
      ;;
    tollgate-hard)
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$TOLLGATE" gateway --config "$WORK/config.json" \
        --credentials-dir "$WORK/creds" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" --workers 1 \
        --allowances "$WORK/allowances.json" --instance bench 2>"$out.log" >/dev/null &
      ;;
  esac
  pid=$!
  python3 "$WORK/client.py" "$port" "$n"
  kill -INT "$pid" 2>/dev/null || true
  sleep 0.5
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Sum of "summary:" lines (one per thread with --separate-threads=no: one file).
  awk '/^summary:/ {s += $2} END {print s + 0}' "$out"*
}

declare -A PER
for t in nginx floor tollgate tollgate-hard; do
  echo "counting $t ($N0 and $N1 requests under callgrind)..." >&2
  i0=$(count "$t" "$N0")
  i1=$(count "$t" "$N1")
  PER[$t]=$(awk -v a="$i0" -v b="$i1" -v n0="$N0" -v n1="$N1" 'BEGIN {printf "%.0f", (b - a) / (n1 - n0)}')
done

if [[ -n ${ANNOTATE:-} ]]; then
  for t in tollgate tollgate-hard; do
    echo "== $t: top functions, inclusive ($N1 requests)"
    callgrind_annotate --inclusive=yes "$WORK/cg.$t.$N1" 2>/dev/null | sed -n '1,60p' || true
  done
fi

awk -v n="${PER[nginx]}" -v f="${PER[floor]}" -v t="${PER[tollgate]}" -v h="${PER[tollgate-hard]}" -v n0="$N0" -v n1="$N1" 'BEGIN {
  printf "\nuser-space instructions per proxied request (callgrind, (I(%d) - I(%d)) / %d)\n\n", n1, n0, n1 - n0
  printf "%-30s %12d\n%-30s %12d\n%-30s %12d\n%-30s %12d\n\n", "nginx proxy", n, "floor (gateway stack)", f, "tollgate gateway", t, "tollgate, Hard budget", h
  printf "ratios: tollgate / nginx %.2fx, tollgate / floor %.2fx, floor / nginx %.2fx\n", t / n, t / f, f / n
  printf "admission (Hard budget): %+d instructions per request (%.2fx tollgate; %.2fx nginx)\n", h - t, h / t, h / n
}'
