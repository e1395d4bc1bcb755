"""Convolution: one conv2d forward, data gradient and weight gradient per call, in NCHW or
channels_last, as cuDNN (CUDA) or oneDNN/ATen (CPU) run them under PyTorch."""

import torch

from . import Skip
from .device import set_tf32, skip_tf32_on_cpu, torch_dtype
from .timing import calibrate, time_queued

# The largest error, relative to the largest float64 value, each dtype may show.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 2e-2, "bf16": 5e-2}


def memory_format(layout):
    """torch's memory format of a suite layout."""
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def conv_step(x, w, gy, stride, padding):
    """The forward and both gradients: (y, dL/dx, dL/dw) for the upstream gradient gy."""
    y = torch.nn.functional.conv2d(x, w, None, stride, padding)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    return y, gx, gw


def check(x, w, gy, stride, padding, dtype):
    """The first image's forward and gradients against float64 on the CPU, so that a fast but
    wrong convolution fails the case."""
    got = conv_step(x[:1], w, gy[:1], stride, padding)
    x64 = x[:1].detach().double().cpu().requires_grad_()
    w64 = w.detach().double().cpu().requires_grad_()
    want = conv_step(x64, w64, gy[:1].double().cpu(), stride, padding)
    for name, g, r in zip(("output", "data gradient", "weight gradient"), got, want):
        err = (g.double().cpu() - r).abs().max().item() / max(r.abs().max().item(), 1e-12)
        if not err <= TOLERANCE[dtype]:
            raise RuntimeError(
                f"convolution {name} wrong: relative error {err:.3g} over {TOLERANCE[dtype]:.1g} ({dtype})"
            )


def backend(dev):
    """What computes the convolution here, in words."""
    if dev.type == "cuda":
        cudnn = torch.backends.cudnn
        version = cudnn.version() if cudnn.is_available() else None
        return f"cudnn {version}, benchmark {cudnn.benchmark}" if version else "cudnn unavailable: ATen kernels"
    mkldnn = torch.backends.mkldnn.is_available()
    return "onednn (mkldnn)" if mkldnn else "aten cpu kernels"


class Conv:
    """conv2d forward + backward on random activations and weights of a ResNet-50 layer."""

    def __init__(self, req, dev):
        p = req["params"]
        s = req["shape"]
        self.dev = dev
        self.warnings = []
        dtype = p["dtype"]
        skip_tf32_on_cpu(dev, dtype)
        if dev.type == "cpu" and p.get("cudnn_benchmark"):
            raise Skip("cudnn_benchmark is cuDNN's (CUDA); the CPU has no cuDNN")
        dt = torch_dtype(dtype, "conv")
        if dev.type == "cuda":
            set_tf32(dtype == "tf32")
            torch.backends.cudnn.benchmark = bool(p.get("cudnn_benchmark"))
        fmt = memory_format(p.get("layout"))
        n, c, k, size, r = p["batch"], s["in_channels"], s["out_channels"], s["size"], s["kernel"]
        out = req["out_size"]
        self.stride, self.padding = s["stride"], s["padding"]
        # Unit-variance outputs: weights scaled by 1/sqrt(fan-in), as He initialisation does.
        self.x = torch.randn(n, c, size, size, device=dev).to(dt).to(memory_format=fmt).requires_grad_()
        w = torch.randn(k, c, r, r, device=dev) / (c * r * r) ** 0.5
        self.w = w.to(dt).to(memory_format=fmt).requires_grad_()
        self.gy = torch.randn(n, k, out, out, device=dev).to(dt).to(memory_format=fmt)
        try:
            check(self.x, self.w, self.gy, self.stride, self.padding, dtype)
        except RuntimeError as e:
            if "not implemented" in str(e) or "Unsupported" in str(e):
                raise Skip(f"this torch ({torch.__version__}) cannot run a {dtype} convolution on {dev}: {e}") from e
            raise
        self.iters = 1 if dev.type == "cpu" else calibrate(dev, self.op)
        self.facts = {"backend": backend(dev), "iters_per_sample": self.iters}

    def op(self):
        """One call: forward and both gradients."""
        return conv_step(self.x, self.w, self.gy, self.stride, self.padding)

    def run(self):
        """One sample."""
        return {"seconds": time_queued(self.dev, self.op, self.iters)}

    def finish(self):
        """Nothing measured over the samples."""
        return {}
