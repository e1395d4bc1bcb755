#!/usr/bin/env python3
"""Writes docs/gpu-validation.md from the runs scripts/gpu-validate.sh made: each native figure
beside torch's and the GPU's physical peak, and PASS/FAIL per path. Standard library only (the
GPU machine may have nothing else).

usage: gpu-validate-report.py RESULTS_DIR NATIVE_RUN_ID TORCH_RUN_ID META_FILE OUT_MD
Exit: 0 every path passed, 1 some path failed, 2 the native run wrote nothing.
"""
import csv
import json
import os
import sys

# Dense (no sparsity) peaks in TFLOP/s from NVIDIA's datasheets: H100 SXM5 / H200 (same
# Hopper die and clocks), H100 PCIe, A100 SXM/PCIe. fp32 is the non-tensor-core rate.
PEAKS = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "fp8": 1978.9}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0, "fp8": 1513.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "fp8": 1978.9}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}),
]
DTYPES = ["fp32", "tf32", "fp16", "bf16", "fp8"]
TORCH_TOLERANCE = 0.03  # bf16 8192³ native must reach 97% of torch.matmul
BATCH_TOLERANCE = 0.03  # per-call time at 2 ms and 8 ms samples must agree within 3%


def peak_for(gpu_name, dtype):
    for key, table in PEAKS:
        if key in (gpu_name or ""):
            return table.get(dtype)
    return None


def load_rows(results, run_id):
    path = os.path.join(results, run_id, "results.csv")
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_json(results, run_id):
    try:
        with open(os.path.join(results, run_id, "run.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def find_first(obj, match):
    """The first value anywhere in a JSON tree (run.json nests the probe's env) whose key and
    value satisfy `match(key, value)`, as a string."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (str, int, float)) and match(k, v):
                return str(v)
        for v in obj.values():
            r = find_first(v, match)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = find_first(v, match)
            if r is not None:
                return r
    return None


def find_key(obj, key):
    """The first value of `key` anywhere in a JSON tree."""
    return find_first(obj, lambda k, _: k == key)


def find_prefixed(obj, prefix, contains):
    """The first string value whose key starts with `prefix` and contains `contains`."""
    return find_first(obj, lambda k, v: isinstance(v, str) and k.startswith(prefix) and contains in k)


def index(rows):
    out = {}
    for r in rows or []:
        out[(r["workload"], r["case"], r["metric"])] = r
    return out


def value(idx, workload, case, metric):
    r = idx.get((workload, case, metric))
    if r is None or r.get("status") != "ok" or r.get("median") in ("", None):
        return None
    try:
        return float(r["median"])
    except ValueError:
        return None


def fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def case_param(case, name):
    for part in case.split(","):
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
    return None


def statuses(rows, workload):
    """(ok, not ok with reasons) over the cases of one workload (one row per case)."""
    seen = {}
    for r in rows or []:
        if r["workload"] == workload:
            prev = seen.get(r["case"])
            if prev is None or r["status"] != "ok":
                seen[r["case"]] = r
    bad = [f"{c}: {r['status']} ({r.get('reason', '')})" for c, r in seen.items() if r["status"] != "ok"]
    return len(seen), shorten(bad)


def shorten(bad):
    """The first two problems and a count of the rest: a cell of the table, not a log."""
    return bad[:2] + ([f"and {len(bad) - 2} more"] if len(bad) > 2 else [])


def torch_only(lines, check, t, torch_rows):
    """The torch engine's own paths (Hugging Face generate, torch.compile, cuDNN convolutions):
    their figures; PASS where every case ran, FAIL where one failed, n/a where the torch run did
    not reach them or the machine lacks what they need (every case skipped, with the reason)."""
    lines += ["## Torch engine only", "", "| case | metric | torch |", "| --- | --- | ---: |"]
    paths = [
        ("generate-hf", "hf generate (transformers, bf16)", ["ttft", "tpot", "decode_tokens_per_s"]),
        ("compile", "torch.compile default (Inductor + triton)", ["compile_time", "graph_breaks", "step_time"]),
        ("conv", "conv bf16 channels_last (cuDNN, checked against float64)", ["throughput", "latency"]),
    ]
    for w, path, metrics in paths:
        for c in sorted({r["case"] for r in torch_rows if r["workload"] == w}):
            for m in metrics:
                v = value(t, w, c, m)
                if v is not None:
                    lines.append(f"| {w}/{c} | {m} | {fmt(v, 3)} |")
        total, bad = statuses(torch_rows, w)
        cases = {r["case"]: r for r in torch_rows if r["workload"] == w and r["status"] != "ok"}
        if total == 0:
            check(path, None, "not run (no torch run, or its budget was spent)")
        elif cases and all(r["status"] == "skipped" for r in cases.values()) and len(cases) == total:
            check(path, None, "; ".join(bad))
        else:
            check(path, not bad, "; ".join(bad) or f"{total} cases")
    lines.append("")


def main(argv):
    results, native_id, torch_id, meta_path, out_md = argv[1:6]
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as fh:
            for line in fh:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    native = load_rows(results, native_id)
    if not native:
        print(f"error: no results for {native_id} under {results}", file=sys.stderr)
        return 2
    torch_rows = load_rows(results, torch_id) or []
    nj = load_json(results, native_id)
    n, t = index(native), index(torch_rows)
    gpu_name = next((r["gpu_name"] for r in native if r.get("gpu_name")), "")
    direct = None
    try:
        with open(os.path.join(results, torch_id + ".matmul")) as fh:
            direct = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass

    checks = []  # (path, PASS/FAIL/n/a, detail)

    def check(path, ok, detail):
        checks.append((path, "n/a" if ok is None else ("PASS" if ok else "FAIL"), detail))

    lines = ["# GPU validation of the native CUDA engine", ""]
    lines += [
        "Written by `scripts/gpu-validate.sh` (do not edit by hand; run it again). Figures are medians",
        "of the run's samples; each GEMM/attention sample batches calls to at least 2 ms of GPU work,",
        "queued behind a spin kernel so that the start event fires with the batch already waiting.",
        "",
        "| | |",
        "| --- | --- |",
        f"| date | {meta.get('date', '?')} |",
        f"| tagbench | {meta.get('tagbench', '?')} (commit {meta.get('commit', '?')}) |",
        f"| device | {meta.get('nvidia_smi_gpus', gpu_name or '?')} |",
        f"| driver | {find_key(nj, 'driver') or '?'} (CUDA API {find_key(nj, 'cuda_driver_api') or meta.get('nvidia_smi_cuda', '?')}) |",
        f"| libraries | cuBLAS {find_key(nj, 'cublas') or '?'}, cuBLASLt {find_key(nj, 'cublaslt') or '?'}, NVRTC {find_key(nj, 'nvrtc') or '?'} (target {find_key(nj, 'nvrtc_target') or '?'}), NCCL {find_key(nj, 'nccl') or '?'}, CUDA runtime {find_key(nj, 'cuda_runtime') or '?'} |",
        f"| library majors | {find_key(nj, 'cuda_library_majors') or '?'} |",
        f"| torch | {meta.get('torch_status', '?')} |",
        f"| wall time | {meta.get('elapsed_s', '?')} s |",
        "",
    ]

    # Probe and telemetry.
    total, bad = statuses(native, "probe")
    check("probe", total > 0 and not bad, "; ".join(bad) or "versions recorded in run.json")
    clocks = [r for r in native if r["metric"] == "gpu_sm_clock" and r["status"] == "ok"]
    check("telemetry (NVML)", bool(clocks), f"{len(clocks)} cases with SM clock readings")

    # GEMM.
    lines += ["## GEMM (TFLOP/s)", "", "| case | native | torch | native / torch | peak | native % of peak |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    gemm_cases = sorted(
        {(r["workload"], r["case"]) for r in native if r["workload"].startswith("gemm")},
        key=lambda wc: (wc[0], DTYPES.index(case_param(wc[1], "dtype")) if case_param(wc[1], "dtype") in DTYPES else 9, int(case_param(wc[1], "size") or 0), wc[1]),
    )
    for w, c in gemm_cases:
        nv, tv = value(n, w, c, "throughput"), value(t, w, c, "throughput")
        dtype = case_param(c, "dtype")
        peak = peak_for(gpu_name, dtype)
        ratio = nv / tv if nv and tv else None
        pct = 100 * nv / peak if nv and peak else None
        lines.append(f"| {w}/{c} | {fmt(nv)} | {fmt(tv)} | {fmt(ratio, 3)} | {fmt(peak)} | {fmt(pct)} |")
    lines.append("")
    for dtype in ["fp32", "tf32", "fp16", "bf16"]:
        rows = [r for r in native if r["workload"] == "gemm" and case_param(r["case"], "dtype") == dtype and r["metric"] in ("throughput", "")]
        bad = [f"{r['case']}: {r['status']} ({r['reason']})" for r in native if r["workload"] == "gemm" and case_param(r["case"], "dtype") == dtype and r["status"] != "ok"]
        check(f"gemm {dtype} (cuBLAS, checked against float64)", bool(rows) and not bad, "; ".join(shorten(sorted(set(bad)))) or f"{len(rows)} sizes")
    total, bad = statuses(native, "gemm-fp8")
    check("gemm fp8 (cuBLASLt, both accumulation modes)", total > 0 and not bad, "; ".join(bad) or f"{total} cases")
    total, bad = statuses(native, "gemm-layout")
    check("gemm layouts nn/nt/tn/tt", total > 0 and not bad, "; ".join(bad) or f"{total} layouts")
    key = "size=8192,dtype=bf16"
    nb = value(n, "gemm", key, "throughput")
    # torch.matmul timed directly right after the native run is the reference (same GPU state,
    # about as long); the torch engine's figure, taken minutes later, where there is none.
    engine_tb = value(t, "gemm", key, "throughput")
    tb = direct or engine_tb
    if nb and tb:
        check("bf16 8192³ within 3% of torch.matmul", nb >= (1 - TORCH_TOLERANCE) * tb,
              f"native {nb:.1f} vs torch.matmul {tb:.1f} TFLOP/s ({100 * (nb / tb - 1):+.1f}%)"
              f"{'' if direct else ' (torch engine: no direct timing)'}; torch engine {fmt(engine_tb)}")
    else:
        check("bf16 8192³ within 3% of torch.matmul", None if nb else False,
              f"native {fmt(nb)}, torch {fmt(tb)}: no torch figure" if nb else "no native figure")

    # Batch independence.
    lines += ["## Time per call against the batch (gemm bf16 1024³)", "", "| sample target | latency per call (ms) | how the samples were taken |", "| --- | ---: | --- |"]
    lat = {}
    for ms in ["0.001", "2", "8"]:
        rid = f"{native_id}-batch-{ms}"
        rows = index(load_rows(results, rid) or [])
        lat[ms] = value(rows, "gemm", "size=1024,dtype=bf16", "latency")
        how = find_prefixed(load_json(results, rid), "gpu_timing ", "size=1024,dtype=bf16") or "?"
        label = "one call per sample" if ms == "0.001" else f"{ms} ms"
        lines.append(f"| {label} | {fmt(lat[ms], 4)} | {how} |")
    lines.append("")
    if lat["2"] and lat["8"]:
        d = lat["2"] / lat["8"] - 1
        extra = f"; one call per sample reads {100 * (lat['0.001'] / lat['8'] - 1):+.1f}%" if lat["0.001"] else ""
        check("time per call independent of the batch", abs(d) <= BATCH_TOLERANCE, f"2 ms vs 8 ms samples: {100 * d:+.1f}%{extra} (a lone call also carries the events' own GPU time)")
    else:
        check("time per call independent of the batch", False, "a batch run wrote no latency")

    # Attention.
    lines += ["## Attention (TFLOP/s)", "", "| case | native | torch | native / torch |", "| --- | ---: | ---: | ---: |"]
    for c in sorted({r["case"] for r in native if r["workload"] == "attention"}):
        nv, tv = value(n, "attention", c, "throughput"), value(t, "attention", c, "throughput")
        lines.append(f"| {c} | {fmt(nv)} | {fmt(tv)} | {fmt(nv / tv if nv and tv else None, 3)} |")
    lines.append("")
    total, bad = statuses(native, "attention")
    check("attention (cuBLAS + NVRTC softmax cubin)", total > 0 and not bad, "; ".join(bad) or f"{total} cases")

    # Generation.
    lines += ["## Token generation", "", "| case | metric | native | torch |", "| --- | --- | ---: | ---: |"]
    for w in ["generate-tiny", "generate"]:
        for c in sorted({r["case"] for r in native if r["workload"] == w}):
            for m in ["ttft", "tpot", "decode_tokens_per_s", "prefill_tokens_per_s", "peak_memory"]:
                nv, tv = value(n, w, c, m), value(t, w, c, m)
                if nv is not None or tv is not None:
                    lines.append(f"| {w}/{c} | {m} | {fmt(nv, 3)} | {fmt(tv, 3)} |")
        total, bad = statuses(native, w)
        check(f"{w} (logits and tokens against the float64 host decoder)", total > 0 and not bad, "; ".join(bad) or f"{total} cases")
    for dtype in DTYPES:
        tokens = find_key(nj, f"generate_{dtype}_check_tokens")
        if tokens:
            lines.append(f"| check ({dtype}) | device tokens | {tokens} | |")
            same, _, total = tokens.split()[:3]
            check(f"generate {dtype} tokens equal the float64 reference", same == total, tokens)
    lines.append("")

    # All-reduce.
    lines += ["## All-reduce (busbw, GB/s, largest message)", "", "| case | native | torch | wrong elements |", "| --- | ---: | ---: | ---: |"]
    for w in ["allreduce", "allreduce-1gpu"]:
        for c in sorted({r["case"] for r in native if r["workload"] == w}):
            wrong = value(n, w, c, "wrong_elements")
            lines.append(f"| {w}/{c} | {fmt(value(n, w, c, 'busbw'))} | {fmt(value(t, w, c, 'busbw'))} | {fmt(wrong, 0)} |")
        total, bad = statuses(native, w)
        wrong = [c for (ww, c, m), r in n.items() if ww == w and m == "wrong_elements" and r["status"] == "ok" and float(r["median"] or 0) != 0]
        check(f"{w} (NCCL)", total > 0 and not bad and not wrong, "; ".join(bad + [f"{c}: wrong elements" for c in wrong]) or f"{total} cases")
    lines.append("")

    torch_only(lines, check, t, torch_rows)

    lines += ["## PASS / FAIL", "", "| path | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {p} | {s} | {d.replace('|', '/')} |" for p, s, d in checks]
    lines.append("")
    failed = [p for p, s, _ in checks if s == "FAIL"]
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} paths passed or were not applicable." if not failed else f"Failed: {', '.join(failed)}.")
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    for p, s, d in checks:
        print(f"{s:5} {p}: {d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
