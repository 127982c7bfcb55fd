#!/usr/bin/env bash
# bench/scale.sh: how the control plane scales with the number of routes (issue 12).
#
# Prints figures; asserts nothing (performance claims come from this script, not from timed
# tests). For each size (default 1000 5000 10000 routes, 5 mock backends each, one namespace):
#   - render_s:     wall time of `tollgate render -f DIR` (YAML parse and validation on every
#                   core, then decide + build + pretty print): the plan step a controller pass
#                   runs, plus YAML and printing (one pass alone: `cargo bench --bench scale_pass`)
#   - render_cpu_s: user + system CPU time of that render (on a shared machine the wall time
#                   grows with the load; the CPU time much less)
#   - json_bytes:   the document as compact JSON
#   - stored_bytes: what the controller writes (`render --stored-dir`, the controller's own
#                   encoder): compact JSON up to 512 KiB, gzip past it, split into shard
#                   ConfigMaps past 1,000,000 compressed bytes
#   - cms:          how many ConfigMaps that is (1, or the index plus its shards)
#   - fits:         whether every ConfigMap is under the 1,000,000-byte ceiling
#   - rss_mib:      gateway VmRSS after loading the document from those files (as a projected
#                   volume of the ConfigMaps holds them) and serving one /metrics scrape
#   - reload_s:     time from renaming the files of a changed document into place (shards
#                   first, index last) to /readyz naming the new revision (polled every 20 ms:
#                   /readyz, not /metrics, whose 12 MB exposition at 10,000 routes would take
#                   a core from the reload it times)
#   - us_per_route: render time per route (linear growth shows as a flat column)
#
# Usage: bench/scale.sh [SIZES...]   (env TOLLGATE: the binary, default target/release/tollgate;
#        DISTINCT=1: every backend's upstream model name carries 48 pseudo-random hex digits, so
#        the document compresses like a fleet of distinct models, not like copies)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TOLLGATE:-$ROOT/target/release/tollgate}"
[[ -x "$BIN" ]] || { echo "no binary at $BIN: cargo build --release --bin tollgate" >&2; exit 1; }
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(1000 5000 10000)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-scale.XXXXXX")"
GW_PID=""
cleanup() {
  if [[ -n "$GW_PID" ]]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
# timed OUT CMD...: runs CMD with stdout to OUT; prints "wall_s cpu_s" (cpu: user + system).
timed() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
with open(out, "wb") as f:
    subprocess.run(cmd, stdout=f, check=True)
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {ru.ru_utime + ru.ru_stime:.3f}")
PY
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# gen N WEIGHT DIR: N routes of 5 mock backends in one file.
gen() {
  DISTINCT="${DISTINCT:-0}" python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
n, w, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(12)
distinct = os.environ["DISTINCT"] == "1"
with open(out + "/routes.yaml", "w") as f:
    for i in range(n):
        f.write(f"---\napiVersion: tollgate.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: route-{i:05d}\n  namespace: bench\nspec:\n  model: alias-{i:05d}\n  backends:\n")
        for b in range(5):
            model = f"upstream-model-{b}" + (f"-{rng.getrandbits(192):048x}" if distinct else "")
            f.write(f"    - name: backend-{b}\n      provider: provider-{b}\n      model: {model}\n      endpoint: {{mock: {{}}}}\n      weight: {w if b == 0 else 10}\n      priority: {b % 2}\n      pricing: {{input: \"0.25\", cachedInput: \"0.025\", output: \"2.00\"}}\n")
PY
}

# volume DIR: "stored_bytes configmaps largest_file" of the files render --stored-dir wrote.
volume() {
  python3 - "$1" <<'PY'
import os, sys
d = sys.argv[1]
sizes = [os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if not f.startswith(".")]
print(sum(sizes), len(sizes), max(sizes))
PY
}

# swap FROM TO: renames the files of FROM into TO, the index last (as the controller writes).
swap() {
  python3 - "$1" "$2" <<'PY'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
names = sorted(os.listdir(src), key=lambda f: f == "config.index.json")
for f in names:
    os.rename(os.path.join(src, f), os.path.join(dst, f))
PY
}

revision_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["revision"])' "$1"; }

wait_revision() { # API_PORT REV DEADLINE_S
  local port=$1 rev=$2 deadline; deadline=$(( $(date +%s) + $3 ))
  while (( $(date +%s) < deadline )); do
    if curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null | grep -qF "serving config $rev"; then return 0; fi
    sleep 0.02
  done
  return 1
}

echo "# tollgate scale bench: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# binary: $BIN"
printf "%-7s %-9s %-13s %-11s %-11s %-12s %-4s %-5s %-8s %-9s\n" routes render_s render_cpu_s us_per_route json_bytes stored_bytes cms fits rss_mib reload_s
for n in "${SIZES[@]}"; do
  d="$WORK/$n"; mkdir -p "$d/a" "$d/b" "$d/vol" "$d/bvol" "$d/creds"
  gen "$n" 50 "$d/a"; gen "$n" 60 "$d/b"
  timing=$(timed "$d/a.json" "$BIN" render -f "$d/a")
  read -r render_s render_cpu <<<"$timing"
  "$BIN" render -f "$d/a" --stored-dir "$d/vol" 2>/dev/null >/dev/null
  "$BIN" render -f "$d/b" --stored-dir "$d/bvol" 2>/dev/null > "$d/b.json"
  json_bytes=$(python3 -c 'import json,sys; print(len(json.dumps(json.load(open(sys.argv[1])), separators=(",", ":"), ensure_ascii=False).encode()))' "$d/a.json")
  read -r stored cms largest < <(volume "$d/vol")
  fits=yes; (( largest > 1000000 )) && fits=NO
  us=$(python3 -c "print(round(float('$render_s') * 1e6 / $n))")

  port=$(free_port); mport=$(free_port)
  "$BIN" gateway --config "$d/vol/config.json" --credentials-dir "$d/creds" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" >"$d/gw.log" 2>&1 &
  GW_PID=$!
  rss="-"; reload="-"
  if wait_revision "$port" "$(revision_of "$d/a.json")" 120; then
    curl -fsS "http://127.0.0.1:$mport/metrics" >/dev/null
    rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$GW_PID/status")
    rev_b=$(revision_of "$d/b.json")
    t0=$(now); swap "$d/bvol" "$d/vol"
    if wait_revision "$port" "$rev_b" 120; then reload=$(elapsed "$t0" "$(now)"); fi
  else
    echo "# gateway did not load the $n-route document: $(tail -3 "$d/gw.log")" >&2
  fi
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=""
  printf "%-7s %-9s %-13s %-11s %-11s %-12s %-4s %-5s %-8s %-9s\n" "$n" "$render_s" "$render_cpu" "$us" "$json_bytes" "$stored" "$cms" "$fits" "$rss" "$reload"
  rm -rf "$d"
done
