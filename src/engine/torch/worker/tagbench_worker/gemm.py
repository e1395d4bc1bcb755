"""GEMM: torch.matmul in fp32/tf32/fp16/bf16, torch._scaled_mm in fp8."""

import torch

from . import Skip
from .device import element_size, rotation_count, set_tf32, skip_tf32_on_cpu, torch_dtype
from .timing import calibrate, time_queued


def check_matmul(dev, dt, dtype):
    """A small product against float64, so that a fast but wrong kernel fails the case."""
    m, n, k = 17, 13, 29
    a = torch.randn(m, k, device=dev).to(dt)
    b = torch.randn(k, n, device=dev).to(dt)
    got = torch.matmul(a, b).double().cpu()
    a64, b64 = a.double().cpu(), b.double().cpu()
    want = a64 @ b64
    scale = (a64.abs() @ b64.abs()).clamp(min=1.0)
    tol = 1e-4 if dtype == "fp32" else (5e-3 if dtype == "tf32" else 5e-2)
    err = ((got - want).abs() / scale).max().item()
    if not err <= tol:
        raise RuntimeError(f"matmul result wrong: relative error {err:.3g} over {tol:.1g} ({dtype})")


class Gemm:
    """One matmul per call, over input sets rotated past the cache."""

    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        dtype = p["dtype"]
        skip_tf32_on_cpu(dev, dtype)
        m, n, k, layout = p["m"], p["n"], p["k"], p["layout"]
        self.facts = {}
        self.warnings = []
        self.i = 0
        if dtype == "fp8":
            self._setup_fp8(m, n, k, layout, req)
            return
        dt = torch_dtype(dtype, "gemm")
        if dev.type == "cuda":
            set_tf32(dtype == "tf32")
            self.facts["allow_tf32"] = dtype == "tf32"
        per_set = (m * k + k * n + m * n) * element_size(dt)
        check_matmul(dev, dt, dtype)
        self.sets = []
        for _ in range(rotation_count(dev, per_set, req.get("rotate"))):
            # Stored shapes follow the layout; the transposes are views, as BLAS's trans flags are.
            a = (
                torch.randn(m, k, device=dev, dtype=dt)
                if layout[0] == "n"
                else torch.randn(k, m, device=dev, dtype=dt).t()
            )
            b = (
                torch.randn(k, n, device=dev, dtype=dt)
                if layout[1] == "n"
                else torch.randn(n, k, device=dev, dtype=dt).t()
            )
            self.sets.append((a, b))
        self.op = self._matmul
        self.iters = 1 if dev.type == "cpu" else calibrate(dev, self.op)
        self.facts["iters_per_sample"] = self.iters

    def _next(self):
        """The next input set."""
        s = self.sets[self.i % len(self.sets)]
        self.i += 1
        return s

    def _matmul(self):
        """One call: torch.matmul on the next set."""
        a, b = self._next()
        return torch.matmul(a, b)

    def _setup_fp8(self, m, n, k, layout, req):
        """fp8 e4m3 inputs through torch._scaled_mm, bf16 output, checked against float64."""
        dev = self.dev
        if dev.type != "cuda":
            raise Skip("fp8 needs CUDA (compute capability 8.9 or newer); the CPU has no fp8 matmul")
        cap = torch.cuda.get_device_capability(dev)
        if cap < (8, 9):
            raise Skip(f"fp8 needs compute capability 8.9; this GPU has {cap[0]}.{cap[1]}")
        if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
            raise Skip(f"this torch ({torch.__version__}) has no torch._scaled_mm / float8_e4m3fn")
        if layout != "nt":
            self.warnings.append(
                f"fp8 through torch._scaled_mm needs A row-major and B column-major: layout {layout} measured as nt"
            )
        per_set = m * k + k * n + m * n * 2
        self.sets = []
        one = torch.tensor(1.0, device=dev)
        fast_accum = bool(req["params"].get("fast_accum", False))
        for _ in range(rotation_count(dev, per_set, None)):
            a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
            b = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn).t()
            self.sets.append((a, b))

        def op():
            a, b = self._next()
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)

        try:
            out = op()
        except RuntimeError as e:
            raise Skip(f"torch._scaled_mm failed on this GPU/torch: {str(e).splitlines()[0]}") from e
        # Older torch returns (out, amax).
        out = out[0] if isinstance(out, tuple) else out
        a, b = self.sets[0]
        want = a[:16].double() @ b[:, :16].double()
        got = out[:16, :16].double()
        # bf16 output of fp8 inputs: compare relative to the sum of |products|.
        scale = (a[:16].double().abs() @ b[:, :16].double().abs()).clamp(min=1.0)
        err = ((got - want).abs() / scale).max().item()
        if not err <= 2e-2:
            raise RuntimeError(f"fp8 matmul result wrong: relative error {err:.3g}")
        self.op = op
        self.iters = calibrate(dev, op)
        self.facts = {
            "iters_per_sample": self.iters,
            "fp8_format": "e4m3fn",
            "out_dtype": "bf16",
            "fast_accum": fast_accum,
        }

    def run(self):
        """One sample."""
        return {"seconds": time_queued(self.dev, self.op, self.iters)}

    def finish(self):
        """Nothing measured over the samples."""
        return {}
