#!/usr/bin/env bash
# GPU validation of the native CUDA engine. Builds nothing: give it the tagbench binary that was
# built elsewhere and carried to the GPU machine.
#
#   scripts/gpu-validate.sh [path/to/tagbench]
#
# 1. runs suites/gpu-validate.toml locally with --device cuda (the run prints its own table),
# 2. prints the figures the targets need: bf16 8192³ TFLOP/s and the fp32 → tf32 speedup,
# 3. runs the machine's own PyTorch as the side-by-side reference when python3 + torch exist
#    (torch.matmul bf16 8192³ TFLOP/s with CUDA events and warm-up; an all-reduce busbw through
#    torch.distributed NCCL on every GPU), and says clearly when they do not.
# Targets: bf16 8192³ within 3% of torch.matmul; fp32 vs tf32 speedup reported.
#
# Environment: TAGBENCH_RESULTS (results directory, default results/), TAGBENCH_REPORTS (report
# directory, default reports/), TAGBENCH_TORCH_PYTHON (the python to try, default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$here/target/release/tagbench}"
results="${TAGBENCH_RESULTS:-$here/results}"
reports="${TAGBENCH_REPORTS:-$here/reports}"
python="${TAGBENCH_TORCH_PYTHON:-python3}"
run_id="gpu-validate-$(date +%Y%m%d-%H%M%S)"

if [[ ! -x "$bin" ]]; then
    echo "error: tagbench binary $bin not found or not executable" >&2
    exit 2
fi

echo "== tagbench $("$bin" --version 2>/dev/null || echo '?') on $(hostname)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv || true
else
    echo "nvidia-smi: not found"
fi

set +e
(cd "$here" && "$bin" run suites/gpu-validate.toml --device cuda --no-progress \
    --results-dir "$results" --report-dir "$reports" --run-id "$run_id")
rc=$?
set -e
csv="$results/$run_id/results.csv"
if [[ ! -f "$csv" ]]; then
    echo "error: the run wrote no $csv (exit $rc)" >&2
    exit 2
fi

# Short table of the figures the targets name (median TFLOP/s of GEMM; fp32 → tf32 speedup).
echo
echo "== native CUDA engine: key figures (median)"
python_csv=$(command -v python3 || true)
if [[ -n "$python_csv" ]]; then
    "$python_csv" - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tf = {}
skipped = [r for r in rows if r["status"] != "ok"]
for r in rows:
    if r["workload"] == "gemm" and r["metric"] == "throughput" and r["status"] == "ok":
        tf[r["case"]] = float(r["median"])
        print(f"  gemm {r['case']:<28} {float(r['median']):9.1f} TFLOP/s")
for size in (1024, 4096, 8192):
    a, b = tf.get(f"size={size},dtype=fp32"), tf.get(f"size={size},dtype=tf32")
    if a and b:
        print(f"  tf32 / fp32 speedup at {size}³: {b / a:.2f}x")
gen = {}
for r in rows:
    if r["workload"] == "generate" and r["status"] == "ok":
        gen.setdefault(r["case"], {})[r["metric"]] = (float(r["median"]), r["unit"])
for case, m in gen.items():
    print(f"  generate {case}: " + ", ".join(
        f"{k} {m[k][0]:.2f} {m[k][1]}" for k in ("ttft", "tpot", "decode_tokens_per_s", "peak_memory") if k in m))
for r in rows:
    if r["workload"].startswith("allreduce") and r["metric"] == "busbw" and r["status"] == "ok":
        print(f"  allreduce {r['case']:<60} busbw {float(r['median']):8.1f} GB/s (largest size)")
reasons = sorted({r["reason"] for r in skipped if r["reason"]})
if skipped:
    print(f"  {len(skipped)} rows not ok: " + "; ".join(reasons[:5]))
PY
else
    echo "  (python3 not found: read $csv)"
fi

echo
echo "== torch reference (the machine's own PyTorch)"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "torch reference: skipped: $python not found"
    exit "$rc"
fi
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" >/dev/null 2>&1; then
    echo "torch reference: skipped: torch is not importable by $python or sees no CUDA GPU"
    exit "$rc"
fi
"$python" - <<'PY'
import torch
torch.backends.cuda.matmul.allow_tf32 = False
n = 8192
dev = torch.device("cuda")
# Random inputs (never zeros) and two input sets, rotated, so that L2 holds neither.
sets = [(torch.randn(n, n, device=dev, dtype=torch.bfloat16),
         torch.randn(n, n, device=dev, dtype=torch.bfloat16)) for _ in range(2)]
for i in range(10):
    a, b = sets[i % 2]
    torch.matmul(a, b)
torch.cuda.synchronize()
times = []
for i in range(50):
    a, b = sets[i % 2]
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); torch.matmul(a, b); e.record(); e.synchronize()
    times.append(s.elapsed_time(e) / 1e3)
times.sort()
med = times[len(times) // 2]
print(f"  torch.matmul bf16 {n}³: {2 * n**3 / med / 1e12:.1f} TFLOP/s (median of 50, {med * 1e3:.3f} ms)  torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
ngpu=$("$python" -c "import torch; print(torch.cuda.device_count())")
cat > "${TMPDIR:-/tmp}/tagbench_torch_allreduce.py" <<'PY'
import os, torch, torch.distributed as dist
dist.init_process_group("nccl")
rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(rank)
nbytes = 256 << 20
x = torch.ones(nbytes // 4, device="cuda")
for _ in range(5):
    dist.all_reduce(x)
torch.cuda.synchronize()
iters = 20
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(iters):
    dist.all_reduce(x)
e.record(); e.synchronize()
t = s.elapsed_time(e) / 1e3 / iters
alg = nbytes / t / 1e9
bus = alg * 2 * (world - 1) / world
if rank == 0:
    print(f"  torch.distributed all_reduce fp32 256 MiB on {world} GPU(s): {t * 1e6:.0f} us, algbw {alg:.1f} GB/s, busbw {bus:.1f} GB/s")
dist.destroy_process_group()
PY
if "$python" -c "import torch.distributed.run" >/dev/null 2>&1; then
    "$python" -m torch.distributed.run --standalone --nproc_per_node="$ngpu" \
        "${TMPDIR:-/tmp}/tagbench_torch_allreduce.py" 2>&1 | grep -v "^W\|^\*\|OMP_NUM_THREADS" || \
        echo "torch reference: all-reduce failed"
else
    echo "torch reference: skipped all-reduce: torch.distributed.run not available"
fi
exit "$rc"
