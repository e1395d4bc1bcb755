"""torch.compile as an axis of generate, precision and attention (`compile` in a suite).

A compiled case runs its workload through `torch.compile(fn, mode=...)`; its first call, which
includes Dynamo's capture and Inductor's compilation, is timed at setup (`compile_time_s`) and
counts Dynamo's graph breaks (`graph_breaks`); the samples then time the compiled steady state.
The compiled output is checked against eager within the dtype's tolerance before anything is
timed. A compilation that fails is the case's error, its first line the Dynamo/Inductor error's.

Inductor needs a C++ compiler on the CPU and triton (with a C compiler for its launcher) on
CUDA: without them the case is skipped, saying which. Each worker process compiles into a fresh
cache folder (TAGBENCH_COMPILE_CACHE_DIR, which tagbench makes per worker and removes after), so
that one round's compiled kernels never make the next round's compile_time look short;
`warm_cache = true` keeps the image's own cache settings (Inductor's default folder persists
across rounds on a host, not across fresh containers).
"""

import atexit
import os
import shutil
import tempfile
import time

import torch

from . import Skip
from .device import first_line, sync

CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
# The cache settings the process started with (the image's), restored for warm_cache.
ORIGINAL = {k: os.environ.get(k) for k in CACHE_VARIABLES}
FRESH = {"dir": None}
# The largest error, relative to the largest eager value, that compiled output may show.
TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2, "fp16": 5e-2, "bf16": 5e-2}


class CompileError(RuntimeError):
    """torch.compile failed: the message carries the Dynamo/Inductor error's first line."""


def fresh_dir():
    """This process's fresh cache folder (tagbench's, or a temporary one removed at exit)."""
    if FRESH["dir"] is None:
        given = os.environ.get("TAGBENCH_COMPILE_CACHE_DIR")
        if given:
            os.makedirs(given, exist_ok=True)
            FRESH["dir"] = given
        else:
            FRESH["dir"] = tempfile.mkdtemp(prefix="tagbench-compile-")
            atexit.register(shutil.rmtree, FRESH["dir"], True)
    return FRESH["dir"]


def use_cache(warm):
    """Points Inductor and triton at the fresh folder, or back at the image's settings; then
    forgets what this process compiled before (Dynamo's caches, Inductor's in-memory ones)."""
    for name in CACHE_VARIABLES:
        if warm:
            if ORIGINAL[name] is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = ORIGINAL[name]
        else:
            os.environ[name] = os.path.join(fresh_dir(), name.split("_")[0].lower())
    torch._dynamo.reset()
    try:
        from torch._inductor.utils import clear_caches
    except ImportError:
        return
    clear_caches()


def check_toolchain(dev):
    """A skip where Inductor cannot compile for `dev`."""
    if not hasattr(torch, "compile"):
        raise Skip(f"this torch ({torch.__version__}) has no torch.compile")
    if dev.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:
            cxx = os.environ.get("CXX") or "g++"
            if shutil.which(cxx) is None:
                raise Skip(f"torch.compile on the CPU needs a C++ compiler: {cxx} not found") from None
            return
        try:
            get_cpp_compiler()
        except Exception as e:  # InvalidCxxCompiler, or whatever the search raises
            raise Skip(f"torch.compile on the CPU needs a C++ compiler: {first_line(e)}") from e
        return
    try:
        import triton  # noqa: F401 - Inductor's GPU code generator
    except Exception as e:  # missing or broken: the same skip
        raise Skip(f"torch.compile on CUDA needs triton: {first_line(e)}") from e
    cc = os.environ.get("CC")
    if not (cc and shutil.which(cc)) and not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        raise Skip("torch.compile on CUDA needs a C compiler for triton's launcher: no cc, gcc or clang on PATH")


def agree(got, want, dtype, what):
    """Fails the case when compiled output `got` differs from eager `want` beyond the dtype's
    tolerance (relative to the largest eager value)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = max(want.abs().max().item(), 1e-12)
    err = (got - want).abs().max().item() / scale
    tol = TOLERANCE.get(dtype, 5e-2)
    if not err <= tol:
        raise RuntimeError(f"compiled {what} differs from eager: relative error {err:.3g} over {tol:.1g} ({dtype})")


class Compile:
    """A case's `compile` setting: wraps functions, times the first compiled call."""

    def __init__(self, params, dev):
        self.mode = params.get("compile") or "none"
        self.dev = dev
        self.seconds = None
        self.graph_breaks = None
        if self.on:
            check_toolchain(dev)
            use_cache(bool(params.get("warm_cache")))

    @property
    def on(self):
        """Whether the case compiles."""
        return self.mode != "none"

    def wrap(self, fn):
        """`fn` compiled in the case's mode (unchanged when it does not compile)."""
        if not self.on:
            return fn
        return torch.compile(fn) if self.mode == "default" else torch.compile(fn, mode=self.mode)

    def first(self, fn, *args):
        """The first call of compiled `fn` (compilation included), timed; its result."""
        from torch._dynamo.utils import counters

        counters.clear()
        t = time.perf_counter()
        try:
            out = fn(*args)
            sync(self.dev)
        except Skip:
            raise
        except Exception as e:
            raise CompileError(f"torch.compile (mode {self.mode}) failed: {first_line(e)}") from e
        self.seconds = time.perf_counter() - t
        self.graph_breaks = sum(counters["graph_break"].values())
        return out

    def facts(self):
        """compile_time_s and graph_breaks for the case's row (none when it does not compile)."""
        if not self.on or self.seconds is None:
            return {}
        return {"compile": self.mode, "compile_time_s": self.seconds, "graph_breaks": self.graph_breaks}
