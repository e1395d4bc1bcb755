#!/usr/bin/env bash
# GPU validation of the native CUDA engine, in one command, on a GPU machine with nothing
# installed but the driver (and, where present, python3 with PyTorch):
#
#   scripts/gpu-validate.sh [path/to/tagbench]
#
# Builds nothing: give it the tagbench binary built elsewhere and carried along (default
# target/release/tagbench). In about 5 minutes on an H100/H200 it
#  1. records date, device, driver and CUDA (nvidia-smi, then the probe case),
#  2. runs suites/gpu-validate.toml with the native engine: probe, GEMM fp32/tf32/fp16/bf16 at
#     1024/4096/8192, fp8 with and without fast accumulation, layouts, attention, generation
#     (tiny and llama-3-8b at 4 layers, each checked against a float64 host reference first),
#     all-reduce on every GPU present and on one, telemetry with every case,
#  3. times torch.matmul bf16 8192³ directly, right after the native run (same GPU state),
#  4. times bf16 1024³ GEMM at three sample targets (TAGBENCH_CUDA_SAMPLE_MS = 0.001, i.e. one
#     call per sample, 2 and 8 ms) to show that the time per call does not depend on the batch,
#  5. runs the same suite with `--engine torch` where python3 can import torch (installing it
#     first from carried wheels in TAGBENCH_WHEELS when it cannot), which also measures the
#     torch engine's own paths (the native run skips them): Hugging Face generate bf16 (the
#     machine's transformers), torch.compile default on a training step, cuDNN conv bf16
#     channels_last,
#  6. writes docs/gpu-validation.md itself: each figure beside torch's and the physical peak,
#     PASS/FAIL per path, and exits 1 when any path fails (2 when nothing ran).
#
# Without a CUDA driver every case is skipped, the page is left as it is and the exit is 0.
#
# Environment: TAGBENCH_VALIDATE_BUDGET_S (whole-script budget in seconds, default 540: each run
# is interrupted when it would leave less than 30 s for the page), TAGBENCH_RESULTS (results directory, default results/), TAGBENCH_REPORTS (the
# native run's HTML report, default reports/), TAGBENCH_TORCH_PYTHON
# (the python to try, default python3), TAGBENCH_WHEELS (a folder of wheels to install torch
# from), TAGBENCH_VALIDATION_DOC (default docs/gpu-validation.md).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$here/target/release/tagbench}"
results="${TAGBENCH_RESULTS:-$here/results}"
reports="${TAGBENCH_REPORTS:-$here/reports}"
python="${TAGBENCH_TORCH_PYTHON:-python3}"
doc="${TAGBENCH_VALIDATION_DOC:-$here/docs/gpu-validation.md}"
stamp="$(date -u +%Y%m%d-%H%M%S)"
native_id="gpu-validate-native-$stamp"
torch_id="gpu-validate-torch-$stamp"
t0=$(date +%s)

if [[ ! -x "$bin" ]]; then
    echo "error: tagbench binary $bin not found or not executable" >&2
    exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 is needed to read the results and write $doc" >&2
    exit 2
fi
mkdir -p "$results"
meta="$results/gpu-validate-$stamp.env"
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(hostname)"
    echo "tagbench=$("$bin" --version 2>/dev/null || echo '?')"
    echo "commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "nvidia_smi_gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader | paste -sd ';')"
        echo "nvidia_smi_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)"
    else
        echo "nvidia_smi_gpus=nvidia-smi not found"
    fi
} >"$meta"
cat "$meta"

# Each run gets what is left of the budget (less a reserve for the page), so that a slow or hung
# path is interrupted (SIGINT: tagbench keeps the rows it has and marks the rest) and the page is
# still written.
budget="${TAGBENCH_VALIDATE_BUDGET_S:-540}"
run_suite() { # run_id, extra args...
    local id="$1"
    shift
    local left=$((budget - 30 - ($(date +%s) - t0)))
    if ((left < 10)); then
        echo "== $id not run: the ${budget} s budget is spent"
        return
    fi
    echo
    echo "== tagbench run $id $* (at most $left s)"
    (cd "$here" && timeout --signal=INT --kill-after=20 "$left" "$bin" run suites/gpu-validate.toml \
        --device cuda --no-progress --results-dir "$results" --run-id "$id" "$@")
    echo "   exit $? after $(($(date +%s) - t0)) s"
}

run_suite "$native_id" --engine native --report-dir "$reports"
if grep -q "no CUDA driver" "$results/$native_id/results.csv" 2>/dev/null &&
    ! grep -q ",ok," "$results/$native_id/results.csv"; then
    echo "no CUDA driver on this machine: nothing to validate; $doc left as it is"
    echo "torch reference: skipped (no GPU)"
    exit 0
fi

# The torch reference needs a python that imports torch with a GPU (from carried wheels if need be).
if ! "$python" -c "import torch" >/dev/null 2>&1 && [[ -n "${TAGBENCH_WHEELS:-}" ]]; then
    echo "== installing torch from the wheels in $TAGBENCH_WHEELS"
    if "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/tagbench-site \
        "$TAGBENCH_WHEELS"/*.whl; then
        export PYTHONPATH="/tmp/tagbench-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
torch_ok=0
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" >/dev/null 2>&1 && torch_ok=1

# torch.matmul bf16 8192³ timed directly, right after the native run (so that both see the GPU
# in the same state), for the 3% comparison.
torch_matmul() {
    echo "== torch.matmul bf16 8192³ timed directly"
    "$python" - >"$results/$torch_id.matmul" <<'PY' || echo "torch.matmul timing failed"
import torch
torch.backends.cuda.matmul.allow_tf32 = False
n = 8192
dev = torch.device("cuda")
# Random inputs (never zeros), two sets rotated so that L2 holds neither; 20 products per
# timed sample so that launch gaps do not count; 40 samples (about 1 s, as long as a native case
# samples) so that the GPU reaches its sustained clocks.
sets = [(torch.randn(n, n, device=dev, dtype=torch.bfloat16),
         torch.randn(n, n, device=dev, dtype=torch.bfloat16)) for _ in range(2)]
for i in range(20):
    torch.matmul(*sets[i % 2])
torch.cuda.synchronize()
times = []
for _ in range(40):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for i in range(20):
        torch.matmul(*sets[i % 2])
    e.record(); e.synchronize()
    times.append(s.elapsed_time(e) / 1e3 / 20)
times.sort()
med = times[len(times) // 2]
print(f"{2 * n**3 / med / 1e12:.2f}")
PY
    cat "$results/$torch_id.matmul" 2>/dev/null
}

if ((torch_ok)); then
    torch_matmul
fi

# Per-call time against the batch: one call per sample (0.001 ms target), 2 ms, 8 ms.
for ms in 0.001 2 8; do
    TAGBENCH_CUDA_SAMPLE_MS=$ms run_suite "$native_id-batch-$ms" --engine native --no-report \
        --filter "gemm/size=1024,dtype=bf16" --set max_time_s=1.5
done

# The torch engine beside it.
torch_status="not run"
if ((torch_ok)); then
    torch_status="$("$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
    TAGBENCH_PYTHON="$(command -v "$python")" run_suite "$torch_id" --engine torch --no-report
else
    torch_status="skipped: $python cannot import torch with a CUDA GPU (set TAGBENCH_TORCH_PYTHON or TAGBENCH_WHEELS)"
    echo "torch reference: $torch_status"
fi
echo "torch_status=$torch_status" >>"$meta"
echo "elapsed_s=$(($(date +%s) - t0))" >>"$meta"

python3 "$here/scripts/gpu-validate-report.py" "$results" "$native_id" "$torch_id" "$meta" "$doc"
rc=$?
echo "== done in $(($(date +%s) - t0)) s: $doc"
exit $rc
