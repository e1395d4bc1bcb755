"""Attention: torch's scaled_dot_product_attention, with the backend SDPA chose or the one forced,
eager or compiled."""

import contextlib
import math

import torch

from . import Skip
from .compile import Compile, agree
from .device import set_tf32, torch_dtype
from .timing import calibrate, time_queued

# The C++ sdp::SDPBackend numbering, the same in every torch 2.x.
BACKEND_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
# The torch.nn.attention.SDPBackend member of each suite backend name.
BACKEND_MEMBERS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}


def supports_gqa():
    """Whether this torch's SDPA takes enable_gqa (grouped KV heads without copies)."""
    import inspect

    try:
        return "enable_gqa" in inspect.signature(torch.nn.functional.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):
        # A builtin without a signature: ask by calling on a tiny input.
        try:
            q = torch.zeros(1, 2, 1, 2)
            kv = torch.zeros(1, 1, 1, 2)
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
            return True
        except TypeError:
            return False


def sdpa_backend_enum():
    """torch.nn.attention.SDPBackend, or None before torch 2.3."""
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend
    except ImportError:
        return None


def reference(q, k, v, causal):
    """softmax(QK^T/sqrt(d))V of one head in float64 on the CPU."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    s = q @ k.t() / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(s.shape, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


class Attention:
    """One SDPA call per sample call, on random Q, K, V."""

    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        dt = torch_dtype(p["dtype"], "attention")
        self.compile = Compile(p, dev)
        b, h, kvh = p["batch"], p["heads"], p.get("kv_heads") or p["heads"]
        sq, d = p["seq_q"], p["head_dim"]
        skv = p.get("seq_kv") or sq
        self.causal = bool(p["causal"])
        if dev.type == "cuda":
            set_tf32(False)
        self.q = torch.randn(b, h, sq, d, device=dev, dtype=dt)
        k = torch.randn(b, kvh, skv, d, device=dev, dtype=dt)
        v = torch.randn(b, kvh, skv, d, device=dev, dtype=dt)
        self.kwargs = {"is_causal": self.causal}
        if kvh != h:
            if supports_gqa():
                self.kwargs["enable_gqa"] = True
            else:
                # Older torch: expand the KV heads once, outside the timed region.
                k = k.repeat_interleave(h // kvh, dim=1)
                v = v.repeat_interleave(h // kvh, dim=1)
                self.warnings.append(f"this torch's SDPA has no enable_gqa: KV heads expanded to {h} before timing")
        self.k, self.v = k, v
        want = p.get("backend", "auto")
        self.backend = self._choose(want)
        ctx = self._context(want)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def op():
            with ctx():
                return sdpa(self.q, self.k, self.v, **self.kwargs)

        self.op = op
        try:
            out = op()
        except RuntimeError as e:
            if want != "auto":
                raise Skip(f"SDPA backend {want} cannot run this case: {str(e).splitlines()[0]}") from e
            raise
        self._check(out)
        if self.compile.on:
            compiled = self.compile.wrap(op)
            agree(self.compile.first(compiled), out, p["dtype"], "attention")
            self.op = compiled
        self.iters = 1 if dev.type == "cpu" else calibrate(dev, self.op)
        self.facts = {"sdpa_backend": self.backend, "iters_per_sample": self.iters, **self.compile.facts()}

    def _choose(self, want):
        """The backend that runs: the one forced, or torch's own dispatcher decision."""
        if want != "auto":
            return want
        chooser = getattr(torch, "_fused_sdp_choice", None)
        if chooser is None:
            return "unknown"
        gqa = {"enable_gqa": True} if self.kwargs.get("enable_gqa") else {}
        try:
            idx = int(chooser(self.q, self.k, self.v, None, 0.0, self.causal, **gqa))
        except (RuntimeError, TypeError):
            return "unknown"
        return BACKEND_NAMES.get(idx, "unknown")

    def _context(self, want):
        """A context factory that forces the backend `want` (nothing for auto)."""
        if want == "auto":
            return contextlib.nullcontext
        enum = sdpa_backend_enum()
        if enum is None:
            raise Skip(f"this torch ({torch.__version__}) cannot force an SDPA backend (no torch.nn.attention)")
        member = getattr(enum, BACKEND_MEMBERS[want], None)
        if member is None:
            raise Skip(f"this torch ({torch.__version__}) has no SDPA backend {want}")
        from torch.nn.attention import sdpa_kernel

        return lambda: sdpa_kernel([member])

    def _check(self, out):
        """Compares one head against an explicit softmax(QK^T/sqrt(d))V in float64."""
        # Query head 0 reads KV head 0 whether the KV heads are grouped or expanded.
        want = reference(self.q[0, 0], self.k[0, 0], self.v[0, 0], self.causal)
        got = out[0, 0].double().cpu()
        tol = 1e-3 if self.q.dtype == torch.float32 else 5e-2
        err = (got - want).abs().max().item()
        if not err <= tol * max(1.0, want.abs().max().item()):
            raise RuntimeError(f"attention result wrong: max abs error {err:.3g} (backend {self.backend})")

    def run(self):
        """One sample."""
        return {"seconds": time_queued(self.dev, self.op, self.iters)}

    def finish(self):
        """Nothing measured over the samples."""
        return {}
