#!/usr/bin/env bash
# Issues 10's and 19's acceptance experiments on this host (CPU, native engine), figures on stdout:
#   1. in-run A/A: two identical local targets (gemm 1024 fp32, attention b1 h8 s256 d64, tiny
#      generate), RUNS runs; verdicts of `compare --along target` per run, and wall time;
#   2. the same runs with the candidate's time samples scaled by 1.10 and by 1.05 (samples.csv
#      rewritten in a copy): how often gemm latency and attention latency are `regression`;
#   3. `compare` JSON: ratio against candidate/baseline as shown.
#   4. wall time per run, and the rounds each case ended with.
# Usage: scripts/issue10-acceptance.sh [RUNS=10] [MIN_ROUNDS=5] [MAX_ROUNDS=MIN_ROUNDS];
# MAX_ROUNDS above MIN_ROUNDS runs adaptive rounds (min_rounds/max_rounds), else a fixed number.
# PAIRING=batches (default) | case | round: how the two targets take turns (suite `pairing`).
# TAGBENCH=path/to/tagbench. The ×1.10 copies keep the rounds the A/A run stopped at (a real
# 10% slowdown would be judged undecided at a look more often and get more rounds).
set -euo pipefail
RUNS=${1:-10}
ROUNDS=${2:-5}
MAX_ROUNDS=${3:-$ROUNDS}
if [ "$MAX_ROUNDS" -gt "$ROUNDS" ]; then
  ROUNDS_KEYS="min_rounds = $ROUNDS
max_rounds = $MAX_ROUNDS"
else
  ROUNDS_KEYS="rounds = $ROUNDS"
fi
BIN=${TAGBENCH:-target/release/tagbench}
PAIRING=${PAIRING:-batches}
# KEEP=DIR keeps the runs (and their ×1.10 copies) in DIR for a closer look.
if [ -n "${KEEP:-}" ]; then
  WORK=$KEEP; mkdir -p "$WORK"
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
cat > "$WORK/aa.toml" <<TOML
name = "aa"
[defaults]
warmup_s = 0.1
min_samples = 10
max_samples = 200
max_time_s = 0.3
target_rel_ci = 0.01
timeout_s = 120
pairing = "$PAIRING"
$ROUNDS_KEYS
[[target]]
name = "a"
local = true
[[target]]
name = "b"
local = true
[[workload]]
kind = "gemm"
size = 1024
dtype = "fp32"
[[workload]]
kind = "attention"
batch = 1
heads = 8
kv_heads = 8
seq_q = 256
head_dim = 64
[[workload]]
kind = "generate"
model = "tiny"
batch = 1
prompt_len = 64
new_tokens = 16
min_samples = 5
max_time_s = 1.0
TOML

verdicts() { # run dir → JSON comparisons as "workload metric verdict ratio base cand" lines
  "$BIN" compare --format json --along target --baseline a "$1" 2>/dev/null |
    python3 -c '
import json, sys
for c in json.load(sys.stdin)["comparisons"]:
    print(c["workload"], c["metric"], c["verdict"], c["ratio"], c["baseline"]["estimate"], c["candidate"]["estimate"])
' || true
}

scale_candidate() { # run dir, factor → a copy with target b's time samples scaled
  local src=$1 dst=$2 f=$3
  cp -r "$src" "$dst"
  python3 - "$dst" "$f" <<'PY'
import csv, sys
d, f = sys.argv[1], float(sys.argv[2])
units = {}
with open(f"{d}/results.csv") as fh:
    rows = list(csv.DictReader(fh))
for r in rows:
    units[(r["workload"], r["metric"])] = r["unit"]
time_units = {"ms", "us", "µs", "s", "ns"}
def scale(rows, value_cols):
    for r in rows:
        if r["target"] == "b" and units.get((r["workload"], r["metric"])) in time_units:
            for c in value_cols:
                if r.get(c):
                    r[c] = repr(float(r[c]) * f)
for name, cols in [("samples.csv", ["value"]), ("results.csv", ["median", "mean", "stddev", "min", "max", "p05", "p95", "ci_low", "ci_high"])]:
    with open(f"{d}/{name}") as fh:
        rd = csv.DictReader(fh); fields = rd.fieldnames; rs = list(rd)
    scale(rs, cols)
    with open(f"{d}/{name}", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields); w.writeheader(); w.writerows(rs)
PY
}

total_judged=0; total_noisy=0; total_changes=0; hits_gemm=0; hits_att=0; worst_ratio_err=0
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  "$BIN" run --no-progress --no-report --run-id "aa-$i" --results-dir "$WORK/r" "$WORK/aa.toml" >/dev/null 2>"$WORK/run-$i.err" || true
  wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  extra=$(grep -c "measuring .* again" "$WORK/run-$i.err" || true)
  verdicts "$WORK/r/aa-$i" > "$WORK/v-$i.txt"
  judged=$(awk '$3!="missing"' "$WORK/v-$i.txt" | wc -l)
  noisy=$(awk '$3=="noisy"' "$WORK/v-$i.txt" | wc -l)
  changes=$(awk '$3=="regression"||$3=="improvement"' "$WORK/v-$i.txt" | wc -l)
  err=$(awk '{ if ($5>0) { e=($6/$5)/$4-1; if (e<0) e=-e; if (e>m) m=e } } END { printf "%.2g", m+0 }' "$WORK/v-$i.txt")
  scale_candidate "$WORK/r/aa-$i" "$WORK/s-$i" 1.10
  verdicts "$WORK/s-$i" > "$WORK/sv-$i.txt"
  g=$(awk '$1=="gemm" && $2=="latency" && $3=="regression"' "$WORK/sv-$i.txt" | wc -l)
  a=$(awk '$1=="attention" && $2=="latency" && $3=="regression"' "$WORK/sv-$i.txt" | wc -l)
  scale_candidate "$WORK/r/aa-$i" "$WORK/f-$i" 1.05
  verdicts "$WORK/f-$i" > "$WORK/fv-$i.txt"
  g5=$(awk '$1=="gemm" && $2=="latency" && $3=="regression"' "$WORK/fv-$i.txt" | wc -l)
  a5=$(awk '$1=="attention" && $2=="latency" && $3=="regression"' "$WORK/fv-$i.txt" | wc -l)
  duty=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])).get("duty_cycle") or {}; print("%.0f%% (%d batches, settle %.1f ms)" % (100 * d.get("share", 0), d.get("batches", 0), d.get("settle_ms_mean", 0)))' "$WORK/r/aa-$i/run.json")
  rounds=$(python3 -c '
import csv, sys, collections
m = collections.defaultdict(set)
for r in csv.DictReader(open(sys.argv[1])):
    if r["round"] and r["workload"] != "probe":
        m[r["workload"]].add(int(r["round"]))
print(",".join(f"{w} {len(v)}" for w, v in sorted(m.items())))' "$WORK/r/aa-$i/results.csv")
  echo "run $i: wall ${wall}s, rounds [$rounds], extra round batches $extra; A/A: $judged judged, $noisy noisy, $changes regression/improvement; ×1.10: gemm latency $(sed -n 's/^gemm latency \([a-z]*\).*/\1/p' "$WORK/sv-$i.txt"), attention latency $(sed -n 's/^attention latency \([a-z]*\).*/\1/p' "$WORK/sv-$i.txt"); ×1.05: gemm $(sed -n 's/^gemm latency \([a-z]*\).*/\1/p' "$WORK/fv-$i.txt"), attention $(sed -n 's/^attention latency \([a-z]*\).*/\1/p' "$WORK/fv-$i.txt"); duty cycle $duty; max |ratio − shown| $err"
  total_wall=$(python3 -c "print(f'{${total_wall:-0} + $wall:.1f}')")
  total_judged=$((total_judged + judged)); total_noisy=$((total_noisy + noisy)); total_changes=$((total_changes + changes))
  hits_gemm=$((hits_gemm + g)); hits_att=$((hits_att + a))
  hits_gemm5=$((${hits_gemm5:-0} + g5)); hits_att5=$((${hits_att5:-0} + a5))
done
# The spread that decides what can be told apart: per metric, the SD of log round medians of
# one side, and of the log ratios of the round pairs (what the paired test sees), over all runs.
python3 - "$WORK" "$RUNS" <<'PY'
import csv, math, statistics as st, sys, collections
work, runs = sys.argv[1], int(sys.argv[2])
side, pair = collections.defaultdict(list), collections.defaultdict(list)
for i in range(1, runs + 1):
    g = collections.defaultdict(list)
    for r in csv.DictReader(open(f"{work}/r/aa-{i}/samples.csv")):
        g[(r["workload"], r["metric"], r["target"], int(r["round"]))].append(float(r["value"]))
    med = {k: st.median(v) for k, v in g.items()}
    for (w, m, t, rd), v in med.items():
        if t == "a" and (w, m, "b", rd) in med:
            pair[(w, m)].append(math.log(med[(w, m, "b", rd)] / v))
    for (w, m) in {(w, m) for (w, m, _, _) in med}:
        la = [math.log(v) for (w2, m2, t, _), v in med.items() if (w2, m2, t) == (w, m, "a")]
        if len(la) > 2:
            side[(w, m)].append(st.stdev(la))
# Paired batches: each round's ratio from its batch pairs (20%-trimmed mean of the pairs' log
# ratios of batch medians, as stats::batch_pair_ratio), and its spread over rounds.
batch = collections.defaultdict(list)
for i in range(1, runs + 1):
    g = collections.defaultdict(list)
    for r in csv.DictReader(open(f"{work}/r/aa-{i}/samples.csv")):
        if r.get("batch"):
            g[(r["workload"], r["metric"], int(r["round"]), r["target"], int(r["batch"]))].append(float(r["value"]))
    rounds = {(w, m, rd) for (w, m, rd, _, _) in g}
    for (w, m, rd) in rounds:
        logs = sorted(math.log(st.median(g[(w, m, rd, "b", bi)]) / st.median(v))
                      for (w2, m2, rd2, t, bi), v in g.items()
                      if (w2, m2, rd2, t) == (w, m, rd, "a") and (w, m, rd, "b", bi) in g)
        if len(logs) >= 2:
            cut = int(0.2 * len(logs))
            kept = logs[cut:len(logs) - cut]
            batch[(w, m)].append(sum(kept) / len(kept))
for k in sorted(pair):
    extra = f", batch-pair round ratios {100 * st.stdev(batch[k]):.1f}% (SD)" if len(batch[k]) > 2 else ""
    print(f"spread {k[0]} {k[1]}: one side's round medians {100 * st.mean(side[k]):.1f}% (mean SD per run), round-pair log ratios {100 * st.stdev(pair[k]):.1f}% (SD){extra}")
PY
echo "wall time: ${total_wall}s over $RUNS runs (rounds $ROUNDS..$MAX_ROUNDS)"
echo "A/A over $RUNS runs: $total_changes regressions/improvements; $total_noisy of $total_judged judged metrics noisy"
echo "×1.10 candidate: gemm latency regression in $hits_gemm of $RUNS, attention latency in $hits_att of $RUNS"
echo "×1.05 candidate: gemm latency regression in $hits_gemm5 of $RUNS, attention latency in $hits_att5 of $RUNS"
