#!/usr/bin/env python3
"""Reference CPU GEMM throughput from numpy (OpenBLAS), to set beside tagbench's native CPU
figure for the same size on the same machine.

Usage: python3 scripts/reference-numpy-gemm.py [SIZE] [SECONDS]
Random fp32 inputs, warm-up, then the median of timed matmuls (time.perf_counter_ns).
"""
import statistics
import sys
import time

import numpy as np

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
budget = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
end = time.perf_counter() + 0.5
while time.perf_counter() < end:
    a @ b
times = []
end = time.perf_counter() + budget
while time.perf_counter() < end or len(times) < 10:
    t = time.perf_counter_ns()
    a @ b
    times.append((time.perf_counter_ns() - t) / 1e9)
med = statistics.median(times)
try:
    from threadpoolctl import threadpool_info
    blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')} threads={i.get('num_threads')}" for i in threadpool_info())
except ImportError:
    blas = "threadpoolctl not installed"
print(f"numpy {np.__version__} ({blas}): fp32 {n}^3 median {med*1e3:.3f} ms over {len(times)} samples = {2*n**3/med/1e9:.1f} GFLOP/s")
