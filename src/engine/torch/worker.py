"""tagbench's torch worker: measures cases with the image's own PyTorch.

tagbench embeds this file and runs it with the image's python3. The Rust worker drives it with
one JSON request per line on stdin and reads one JSON reply per line from the real stdout:

    {"op": "hello"}                       -> {"ok": {versions}}  or {"skip": "torch not importable ..."}
    {"op": "setup", "kind": ..., ...}     -> {"ok": {facts}}     or {"skip": ...} / {"error": ...}
    {"op": "run"}                         -> {"ok": {"seconds": s, "values": {...}}}
    {"op": "size", "bytes": n}            -> {"ok": {"wrong": k, "iters": i}}   (allreduce)
    {"op": "finish"}                      -> {"ok": {facts measured over the samples}}

The Rust side owns the sampling loop and every statistic; this script only times one sample per
"run" (torch.cuda.Event on CUDA, time.perf_counter otherwise), so pipe latency never enters a
sample. Anything else that writes to stdout (a print in a library, a C++ warning) is sent to
stderr, which tagbench keeps in the case log.

`--distributions` prints one reply, the Python distributions importable here, and exits without
importing torch. `--rank DEVICE` runs one rank of a multi-rank case (all-reduce, tensor-parallel generation,
DDP/FSDP steps): rank 0 reads the requests and broadcasts them, every rank handles each in lockstep. Only torch and the standard library are used, and the code runs on
the torch 2.x versions found in images.
"""

import json
import math
import os
import sys
import time
import traceback

torch = None
TORCH_ERROR = None

# Below this, a sample repeats the operation and reports the mean, so that timer resolution and
# launch overhead do not dominate small operations.
MIN_SAMPLE_S = 1e-3
MAX_ITERS = 1000
# Training steps from the seeded start before the loss is compared across precision modes
# (the native engine uses the same number).
NUMERICS_STEPS = 10


class Skip(Exception):
    """The case cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------
# Devices and timing


def resolve_device(name):
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise Skip(
            "torch.cuda.is_available() is false in this image (torch %s, built for CUDA %s)"
            % (torch.__version__, torch.version.cuda)
        )
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise Skip("%s requested but torch sees %d GPU(s)" % (name, torch.cuda.device_count()))
    torch.cuda.set_device(dev)
    return dev


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_iters(dev, fn, iters):
    """Seconds per call of `fn`, over `iters` back-to-back calls."""
    if dev.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


# The GPU-time lead of a queued sample (time_queued): twice the host's time to enqueue the
# last batch, within these bounds, as the native engine's spin kernel (docs/cuda.md, "Timing
# small work").
MIN_LEAD_S = 20e-6
MAX_LEAD_S = 50e-3
LEAD = {"s": MIN_LEAD_S, "cycles_per_s": None}


def lead_for(host_s):
    return min(MAX_LEAD_S, max(MIN_LEAD_S, 2.0 * host_s))


def sleep_cycles_per_s(dev):
    """GPU clock cycles per second of torch.cuda._sleep, timed once with events."""
    if LEAD["cycles_per_s"] is None:
        cycles = 20_000_000
        torch.cuda._sleep(1000)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        LEAD["cycles_per_s"] = cycles / max(start.elapsed_time(end) / 1e3, 1e-6)
    return LEAD["cycles_per_s"]


def time_queued(dev, fn, iters):
    """Seconds of GPU time per call of `fn` over `iters` calls queued behind a torch.cuda._sleep
    whose lead covers the host's enqueue time, so that the start event fires with the whole
    batch waiting and the events time GPU work, not eager dispatch (a sample whose calls were
    not all queued in time is taken again, twice at most, with a longer lead). Elsewhere, or
    without torch.cuda._sleep: time_iters."""
    if dev.type != "cuda" or not hasattr(torch.cuda, "_sleep"):
        return time_iters(dev, fn, iters)
    cps = sleep_cycles_per_s(dev)
    for attempt in range(3):
        lead = LEAD["s"]
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        torch.cuda._sleep(int(lead * cps))
        start.record()
        for _ in range(iters):
            fn()
        host = time.perf_counter() - t0
        end.record()
        end.synchronize()
        if host <= lead:
            LEAD["s"] = max(lead / 2, lead_for(host))
            break
        LEAD["s"] = lead_for(host)
    return start.elapsed_time(end) / 1e3 / iters


def calibrate(dev, fn):
    """Calls per sample so that a sample lasts at least MIN_SAMPLE_S."""
    fn()
    sync(dev)
    once = time_iters(dev, fn, 1)
    if once <= 0:
        return MAX_ITERS
    return max(1, min(MAX_ITERS, int(math.ceil(MIN_SAMPLE_S / once))))


def torch_dtype(name, what):
    table = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise Skip("%s does not support dtype %s" % (what, name))
    return table[name]


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def skip_tf32_on_cpu(dev, dtype):
    if dev.type == "cpu" and dtype == "tf32":
        raise Skip("tf32 is a CUDA tensor-core mode; the CPU has no tf32 arithmetic")


def rotation_count(dev, bytes_per_set, rotate_hint):
    """Input sets to rotate through so that each call reads its inputs from memory, not cache."""
    if dev.type == "cpu":
        return max(1, int(rotate_hint or 1))
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or (50 << 20)
    want = int(math.ceil(2 * l2 / max(1, bytes_per_set)))
    cap = max(1, (1 << 30) // max(1, bytes_per_set))
    return max(1, min(want, cap, 64))


def gpu_facts(dev):
    if dev.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(dev)
    return {"gpu_name": props.name, "gpu_index": dev.index if dev.index is not None else torch.cuda.current_device()}


def mem_reset(dev):
    """Starts a peak-memory window; returns False where it cannot be measured."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    try:
        # Writing 5 resets the peak resident set (VmHWM), Linux >= 4.0, own process.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_peak_mib(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def mem_available_bytes(dev):
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
            else:
                return None
    except OSError:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            avail = min(avail, int(limit))
    except OSError:
        pass
    return avail


# ---------------------------------------------------------------------------------------------
# Workloads. Each is a class: __init__ sets up (and may raise Skip), run() times one sample,
# finish() reports what was seen over all samples.


class Gemm:
    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        dtype = p["dtype"]
        skip_tf32_on_cpu(dev, dtype)
        m, n, k, layout = p["m"], p["n"], p["k"], p["layout"]
        self.facts = {}
        self.warnings = []
        if dtype == "fp8":
            self._setup_fp8(m, n, k, layout, req)
            return
        dt = torch_dtype(dtype, "gemm")
        if dev.type == "cuda":
            set_tf32(dtype == "tf32")
            self.facts["allow_tf32"] = dtype == "tf32"
        elem = dt.itemsize if hasattr(dt, "itemsize") else torch.tensor([], dtype=dt).element_size()
        per_set = (m * k + k * n + m * n) * elem
        check_matmul(dev, dt, dtype)
        self.sets = []
        for _ in range(rotation_count(dev, per_set, req.get("rotate"))):
            # Stored shapes follow the layout; the transposes are views, as BLAS's trans flags are.
            a = torch.randn(m, k, device=dev, dtype=dt) if layout[0] == "n" else torch.randn(k, m, device=dev, dtype=dt).t()
            b = torch.randn(k, n, device=dev, dtype=dt) if layout[1] == "n" else torch.randn(n, k, device=dev, dtype=dt).t()
            self.sets.append((a, b))
        self.i = 0

        def op():
            a, b = self.sets[self.i % len(self.sets)]
            self.i += 1
            return torch.matmul(a, b)

        self.op = op
        self.iters = 1 if dev.type == "cpu" else calibrate(dev, op)
        self.facts["iters_per_sample"] = self.iters

    def _setup_fp8(self, m, n, k, layout, req):
        dev = self.dev
        if dev.type != "cuda":
            raise Skip("fp8 needs CUDA (compute capability 8.9 or newer); the CPU has no fp8 matmul")
        cap = torch.cuda.get_device_capability(dev)
        if cap < (8, 9):
            raise Skip("fp8 needs compute capability 8.9; this GPU has %d.%d" % cap)
        if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
            raise Skip("this torch (%s) has no torch._scaled_mm / float8_e4m3fn" % torch.__version__)
        if layout != "nt":
            self.warnings.append(
                "fp8 through torch._scaled_mm needs A row-major and B column-major: layout %s measured as nt" % layout
            )
        per_set = m * k + k * n + m * n * 2
        self.sets = []
        one = torch.tensor(1.0, device=dev)
        fast_accum = bool(req["params"].get("fast_accum", False))
        self.facts["fast_accum"] = fast_accum
        for _ in range(rotation_count(dev, per_set, None)):
            a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
            b = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn).t()
            self.sets.append((a, b))
        self.i = 0

        def op():
            a, b = self.sets[self.i % len(self.sets)]
            self.i += 1
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)

        try:
            out = op()
        except RuntimeError as e:
            raise Skip("torch._scaled_mm failed on this GPU/torch: %s" % str(e).splitlines()[0])
        # Older torch returns (out, amax).
        out = out[0] if isinstance(out, tuple) else out
        a, b = self.sets[0]
        want = a[:16].double() @ b[:, :16].double()
        got = out[:16, :16].double()
        # bf16 output of fp8 inputs: compare relative to the sum of |products|.
        scale = (a[:16].double().abs() @ b[:, :16].double().abs()).clamp(min=1.0)
        err = ((got - want).abs() / scale).max().item()
        if not err <= 2e-2:
            raise RuntimeError("fp8 matmul result wrong: relative error %.3g" % err)
        self.op = op
        self.iters = calibrate(dev, op)
        self.facts = {"iters_per_sample": self.iters, "fp8_format": "e4m3fn", "out_dtype": "bf16"}

    def run(self):
        return {"seconds": time_queued(self.dev, self.op, self.iters)}

    def finish(self):
        return {}


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
        raise RuntimeError("matmul result wrong: relative error %.3g over %.1g (%s)" % (err, tol, dtype))


def sdpa_backend_enum():
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend
    except ImportError:
        return None


class Attention:
    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        dt = torch_dtype(p["dtype"], "attention")
        b, h, kvh = p["batch"], p["heads"], p.get("kv_heads") or p["heads"]
        sq, d = p["seq_q"], p["head_dim"]
        skv = p.get("seq_kv") or sq
        self.causal = bool(p["causal"])
        if dev.type == "cuda":
            set_tf32(False)
        F = torch.nn.functional
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
                self.warnings.append("this torch's SDPA has no enable_gqa: KV heads expanded to %d before timing" % h)
        self.k, self.v = k, v
        want = p.get("backend", "auto")
        self.backend = self._choose(want)
        ctx = self._context(want)

        def op():
            with ctx():
                return F.scaled_dot_product_attention(self.q, self.k, self.v, **self.kwargs)

        self.op = op
        try:
            out = op()
        except RuntimeError as e:
            if want != "auto":
                raise Skip("SDPA backend %s cannot run this case: %s" % (want, str(e).splitlines()[0]))
            raise
        self._check(out)
        self.iters = 1 if dev.type == "cpu" else calibrate(dev, op)
        self.facts = {"sdpa_backend": self.backend, "iters_per_sample": self.iters}

    def _choose(self, want):
        if want != "auto":
            return want
        # torch's own dispatcher decision: what SDPA runs when no backend is forced.
        chooser = getattr(torch, "_fused_sdp_choice", None)
        if chooser is None:
            return "unknown"
        gqa = {"enable_gqa": True} if self.kwargs.get("enable_gqa") else {}
        try:
            idx = int(chooser(self.q, self.k, self.v, None, 0.0, self.causal, **gqa))
        except (RuntimeError, TypeError):
            return "unknown"
        # The C++ sdp::SDPBackend numbering, the same in every torch 2.x.
        return {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}.get(idx, "unknown")
        return "unknown"

    def _context(self, want):
        import contextlib

        if want == "auto":
            return contextlib.nullcontext
        enum = sdpa_backend_enum()
        if enum is None:
            raise Skip("this torch (%s) cannot force an SDPA backend (no torch.nn.attention)" % torch.__version__)
        names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
        member = getattr(enum, names[want], None)
        if member is None:
            raise Skip("this torch (%s) has no SDPA backend %s" % (torch.__version__, want))
        from torch.nn.attention import sdpa_kernel

        return lambda: sdpa_kernel([member])

    def _check(self, out):
        """Compares one head against an explicit softmax(QK^T/sqrt(d))V in float64."""
        # Query head 0 reads KV head 0 whether the KV heads are grouped or expanded.
        q = self.q[0, 0].double().cpu()
        k = self.k[0, 0].double().cpu()
        v = self.v[0, 0].double().cpu()
        s = q @ k.t() / math.sqrt(q.shape[-1])
        if self.causal:
            mask = torch.ones(s.shape, dtype=torch.bool).tril()
            s = s.masked_fill(~mask, float("-inf"))
        want = torch.softmax(s, dim=-1) @ v
        got = out[0, 0].double().cpu()
        tol = 1e-3 if self.q.dtype == torch.float32 else 5e-2
        err = (got - want).abs().max().item()
        if not err <= tol * max(1.0, want.abs().max().item()):
            raise RuntimeError("attention result wrong: max abs error %.3g (backend %s)" % (err, self.backend))

    def run(self):
        return {"seconds": time_queued(self.dev, self.op, self.iters)}

    def finish(self):
        return {}


def supports_gqa():
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


class Llama:
    """A Llama-architecture decoder (RMSNorm, RoPE, GQA, SwiGLU MLP, KV cache) in plain torch with
    random weights: the shapes of the real model, none of its files.

    With `world` > 1 it is this rank's shard, Megatron-LM's tensor parallelism (Shoeybi et al.,
    2019): attention heads and the MLP's gate/up split by columns, o_proj and down_proj by rows
    with one all-reduce after each, embedding and LM head split by vocabulary. Every weight is
    drawn whole from its own seed and then sliced, so that all ranks together hold exactly the
    one-rank model and tensor_parallel = N generates the tokens tensor_parallel = 1 does."""

    def __init__(self, shape, dt, dev, batch, max_len, rank=0, world=1):
        h, inter = shape["hidden"], shape["intermediate"]
        heads, kv_heads, vocab = shape["heads"], shape["kv_heads"], shape["vocab"]
        for name, n in (("heads", heads), ("kv_heads", kv_heads), ("intermediate", inter), ("vocab", vocab)):
            if n % world:
                raise Skip("tensor_parallel = %d must divide %s (%d)" % (world, name, n))
        self.hd = h // heads
        self.heads, self.kv_heads = heads // world, kv_heads // world
        self.inter = inter // world
        self.vocab = vocab // world
        self.vstart = rank * self.vocab
        self.rank, self.world = rank, world
        self.dev, self.dt = dev, dt
        self.seed = 0
        self.comm = []

        def full(out_f, in_f):
            # N(0, 0.02) as Hugging Face initialises Llama; never zeros (zeros run unrealistically
            # fast). One seed per tensor, the same on every rank.
            self.seed += 1
            if dev.type == "cuda":
                g = torch.Generator(device=dev).manual_seed(self.seed)
                return torch.empty(out_f, in_f, dtype=dt, device=dev).normal_(0.0, 0.02, generator=g)
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            return torch.randn(out_f, in_f, generator=g).mul_(0.02).to(dt)

        def rows(t, start, n):
            return t[start : start + n]

        q, kv = self.heads * self.hd, self.kv_heads * self.hd
        self.q, self.kv = q, kv
        kv_full = kv_heads * self.hd
        self.embed = rows(full(vocab, h), self.vstart, self.vocab).clone()
        self.layers = []
        for _ in range(shape["layers"]):
            wqkv = full(h + 2 * kv_full, h)
            wqkv = torch.cat(
                (rows(wqkv, rank * q, q), rows(wqkv, h + rank * kv, kv), rows(wqkv, h + kv_full + rank * kv, kv))
            )
            wo = full(h, h)[:, rank * q : (rank + 1) * q].contiguous()
            wgu = full(2 * inter, h)
            wgu = torch.cat((rows(wgu, rank * self.inter, self.inter), rows(wgu, inter + rank * self.inter, self.inter)))
            wd = full(h, inter)[:, rank * self.inter : (rank + 1) * self.inter].contiguous()
            self.layers.append(
                {
                    "ln1": torch.ones(h, dtype=dt, device=dev),
                    "wqkv": wqkv,
                    "wo": wo,
                    "ln2": torch.ones(h, dtype=dt, device=dev),
                    "wgu": wgu,
                    "wd": wd,
                    "k": torch.zeros(batch, self.kv_heads, max_len, self.hd, dtype=dt, device=dev),
                    "v": torch.zeros(batch, self.kv_heads, max_len, self.hd, dtype=dt, device=dev),
                }
            )
        self.norm = torch.ones(h, dtype=dt, device=dev)
        self.head = rows(full(vocab, h), self.vstart, self.vocab).clone()
        inv = 1.0 / (float(shape["rope_theta"]) ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        pos = torch.arange(max_len, dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        self.cos = freqs.cos().to(dev)
        self.sin = freqs.sin().to(dev)
        self.gqa = supports_gqa()

    @staticmethod
    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w

    def rope(self, x, start):
        # x: [b, heads, s, hd], rotating the two halves (Hugging Face's rotate_half convention).
        s = x.shape[2]
        cos = self.cos[start : start + s].to(x.dtype)
        sin = self.sin[start : start + s].to(x.dtype)
        x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2 :]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def all_reduce(self, x):
        """Sums the ranks' partial results, timing the call (its share of decode is a metric)."""
        if self.dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            DIST.dist.all_reduce(x)
            end.record()
            self.comm.append((start, end))
        else:
            t = time.perf_counter()
            DIST.dist.all_reduce(x)
            self.comm.append(time.perf_counter() - t)
        return x

    def comm_seconds(self):
        """Seconds spent in all-reduce since the last call."""
        if self.dev.type == "cuda":
            if self.comm:
                self.comm[-1][1].synchronize()
            s = sum(a.elapsed_time(b) for a, b in self.comm) / 1e3
        else:
            s = sum(self.comm)
        self.comm = []
        return s

    def forward(self, tokens, start):
        F = torch.nn.functional
        b, s = tokens.shape
        if self.world > 1:
            local = tokens - self.vstart
            outside = (local < 0) | (local >= self.vocab)
            x = F.embedding(local.masked_fill(outside, 0), self.embed)
            x = self.all_reduce(x.masked_fill(outside.unsqueeze(-1), 0))
        else:
            x = F.embedding(tokens, self.embed)
        for L in self.layers:
            a = self.rms(x, L["ln1"])
            qkv = a @ L["wqkv"].t()
            q, k, v = qkv.split([self.q, self.kv, self.kv], dim=-1)
            q = self.rope(q.view(b, s, self.heads, self.hd).transpose(1, 2), start)
            k = self.rope(k.view(b, s, self.kv_heads, self.hd).transpose(1, 2), start)
            v = v.view(b, s, self.kv_heads, self.hd).transpose(1, 2)
            L["k"][:, :, start : start + s] = k
            L["v"][:, :, start : start + s] = v
            keys = L["k"][:, :, : start + s]
            vals = L["v"][:, :, : start + s]
            kwargs = {}
            if self.kv_heads != self.heads:
                if self.gqa:
                    kwargs["enable_gqa"] = True
                else:
                    rep = self.heads // self.kv_heads
                    keys = keys.repeat_interleave(rep, dim=1)
                    vals = vals.repeat_interleave(rep, dim=1)
            # The prompt attends causally; a decoded token attends to everything cached.
            y = F.scaled_dot_product_attention(q, keys, vals, is_causal=s > 1, **kwargs)
            o = y.transpose(1, 2).reshape(b, s, self.q) @ L["wo"].t()
            x = x + (self.all_reduce(o) if self.world > 1 else o)
            m = self.rms(x, L["ln2"])
            gate, up = (m @ L["wgu"].t()).split([self.inter, self.inter], dim=-1)
            d = (F.silu(gate) * up) @ L["wd"].t()
            x = x + (self.all_reduce(d) if self.world > 1 else d)
        # Logits of the last position only, as serving engines compute them.
        last = self.rms(x[:, -1], self.norm)
        logits = last @ self.head.t()
        if self.world > 1:
            # Each rank holds a slice of the vocabulary: gather the whole row for the argmax.
            parts = [torch.empty_like(logits) for _ in range(self.world)]
            DIST.dist.all_gather(parts, logits.contiguous())
            logits = torch.cat(parts, dim=-1)
        return logits


class Generate:
    def __init__(self, req, dev):
        p = req["params"]
        shape = req["shape"]
        self.dev = dev
        self.warnings = []
        tp = int(p.get("tensor_parallel") or 1)
        rank, world = (DIST.rank, DIST.world) if DIST is not None else (0, 1)
        if tp != world:
            raise RuntimeError("tensor_parallel = %d but the case runs on %d rank(s)" % (tp, world))
        dt = torch_dtype(p["dtype"], "generate")
        elem = torch.tensor([], dtype=dt).element_size()
        weights = shape["parameters"] * elem / world
        avail = mem_available_bytes(dev)
        if dev.type == "cpu":
            # Every rank of a CPU case shares the host's memory.
            weights *= world
        if avail is not None and weights * 1.2 > avail:
            raise Skip(
                "the model needs %.1f GiB for its weights and %.1f GiB of memory is available (lower `layers`)"
                % (weights / 2**30, avail / 2**30)
            )
        if dev.type == "cuda":
            set_tf32(False)
        self.batch, self.prompt_len, self.new_tokens = p["batch"], p["prompt_len"], p["new_tokens"]
        with torch.inference_mode():
            self.model = Llama(shape, dt, dev, self.batch, self.prompt_len + self.new_tokens, rank, world)
            g = torch.Generator(device="cpu").manual_seed(1)
            self.prompt = torch.randint(0, shape["vocab"], (self.batch, self.prompt_len), generator=g).to(dev)
        # After the build: the whole-tensor temporaries each rank slices from are not its memory.
        self.tracked = mem_reset(dev)
        self.tokens_hash = ""
        self.facts = {"sdpa_gqa": self.model.gqa, "tensor_parallel": world}

    def run(self):
        import hashlib

        with torch.inference_mode():
            t = time.perf_counter()
            logits = self.model.forward(self.prompt, 0)
            nxt = logits.argmax(-1, keepdim=True)
            # Reading the token back forces the computation, as a server returning it would.
            nxt[0, 0].item()
            ttft = time.perf_counter() - t
            self.model.comm_seconds()
            tokens = [nxt]
            steps = []
            for i in range(1, self.new_tokens):
                t = time.perf_counter()
                logits = self.model.forward(nxt, self.prompt_len + i - 1)
                nxt = logits.argmax(-1, keepdim=True)
                nxt[0, 0].item()
                steps.append(time.perf_counter() - t)
                tokens.append(nxt)
            comm = self.model.comm_seconds()
        # The generated tokens, hashed: tensor_parallel = N must give those of N = 1.
        self.tokens_hash = hashlib.sha256(str(torch.cat(tokens, dim=-1).cpu().tolist()).encode()).hexdigest()[:16]
        values = {"ttft_s": ttft}
        if steps:
            values["tpot_s"] = sum(steps) / len(steps)
            if self.model.world > 1:
                values["allreduce_share_pct"] = 100.0 * comm / sum(steps)
        return {"seconds": ttft + sum(steps), "values": values}

    def finish(self):
        peak = dist_max(mem_peak_mib(self.dev) if self.tracked else None)
        out = {"tokens_hash": self.tokens_hash}
        if peak is not None:
            out["peak_memory_mib"] = peak
        return out


class Precision:
    """One training step (forward, fp32 MSE loss, backward, AdamW) in the case's mode; the loss
    after NUMERICS_STEPS steps from a seeded start is what the fp32 reference is compared with."""

    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        mode = p["mode"]
        self.autocast = None
        self.scaler = None
        if dev.type == "cuda":
            set_tf32(mode == "tf32")
        else:
            skip_tf32_on_cpu(dev, mode)
        if mode in ("amp-fp16", "amp-bf16"):
            self.autocast = torch.float16 if mode == "amp-fp16" else torch.bfloat16
            if dev.type == "cpu" and self.autocast == torch.float16 and not cpu_fp16_autocast():
                raise Skip("this torch (%s) has no fp16 autocast on the CPU" % torch.__version__)
        parallel = p.get("parallel") or "none"
        rank, world = (DIST.rank, DIST.world) if DIST is not None else (0, 1)
        if parallel != "none" and world != int(p.get("ranks") or 1):
            raise RuntimeError("parallel = %s over %s ranks, but the case runs on %d" % (parallel, p.get("ranks"), world))
        torch.manual_seed(0)
        h = p["hidden"]
        if p["model"] == "mlp":
            nn = torch.nn
            self.model = nn.Sequential(nn.Linear(h, 4 * h), nn.GELU(), nn.Linear(4 * h, h), nn.GELU(), nn.Linear(h, h))
            shape = (p["batch"], h)
        else:
            self.model = Block(h, p["heads"])
            shape = (p["batch"], p["seq"], h)
        self.model.to(dev)
        # `batch` is the global batch: each rank takes its slice of the same seeded data, so the
        # ranks together see what one rank sees, and the losses can be compared.
        g = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(*shape, generator=g)
        target = torch.randn(*shape, generator=g)
        per = p["batch"] // world
        self.x = x[rank * per : (rank + 1) * per].to(dev)
        self.target = target[rank * per : (rank + 1) * per].to(dev)
        self.world = world
        if parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        elif parallel == "fsdp":
            fully_shard = fsdp2()
            # FSDP2: each layer its own unit (gathered just before use), then the root for the rest.
            for m in self.model.modules():
                if isinstance(m, torch.nn.Linear):
                    fully_shard(m)
            fully_shard(self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        if self.autocast == torch.float16:
            self.scaler = make_grad_scaler(dev)
        self.batch = p["batch"]
        loss = float("nan")
        for _ in range(NUMERICS_STEPS):
            loss = self.step()
        if DIST is not None:
            # The mean of the ranks' slice losses is the loss over the whole batch.
            loss = DIST.mean_cpu(loss)
        self.tracked = mem_reset(dev)
        self.facts = {"loss": loss, "grad_scaler": self.scaler is not None, "parallel": parallel, "world_size": world}

    def step(self):
        F = torch.nn.functional
        self.opt.zero_grad(set_to_none=True)
        if self.autocast is not None:
            with torch.autocast(device_type=self.dev.type, dtype=self.autocast):
                y = self.model(self.x)
        else:
            y = self.model(self.x)
        loss = F.mse_loss(y.float(), self.target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return loss.item()

    def run(self):
        sync(self.dev)
        t = time.perf_counter()
        self.step()
        # step() reads the loss back, so the device has finished when it returns.
        return {"seconds": time.perf_counter() - t}

    def finish(self):
        peak = dist_max(mem_peak_mib(self.dev) if self.tracked else None)
        return {"peak_memory_mib": peak} if peak is not None else {}


def fsdp2():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise Skip("this torch (%s) has no FSDP2 fully_shard (torch 2.4 or newer)" % torch.__version__)
    return fully_shard


def cpu_fp16_autocast():
    try:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except (RuntimeError, AssertionError):
        return False


def make_grad_scaler(dev):
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        try:
            return amp.GradScaler(dev.type)
        except (TypeError, RuntimeError, AssertionError) as e:
            if dev.type == "cpu":
                raise Skip("this torch (%s) has no GradScaler for the CPU: %s" % (torch.__version__, e))
    if dev.type == "cuda":
        return torch.cuda.amp.GradScaler()
    raise Skip("this torch (%s) has no GradScaler for the CPU" % torch.__version__)


def _block_class():
    nn = torch.nn
    F = nn.functional

    class _Block(nn.Module):
        """A pre-norm transformer block: causal self-attention and a GELU MLP."""

        def __init__(self, h, heads):
            super().__init__()
            self.heads = heads
            self.ln1 = nn.LayerNorm(h)
            self.qkv = nn.Linear(h, 3 * h, bias=False)
            self.wo = nn.Linear(h, h, bias=False)
            self.ln2 = nn.LayerNorm(h)
            self.up = nn.Linear(h, 4 * h, bias=False)
            self.down = nn.Linear(4 * h, h, bias=False)

        def forward(self, x):
            b, s, h = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(h, dim=-1)
            split = lambda t: t.view(b, s, self.heads, h // self.heads).transpose(1, 2)
            y = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
            x = x + self.wo(y.transpose(1, 2).reshape(b, s, h))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    return _Block


def Block(h, heads):
    return _block_class()(h, heads)


# ---------------------------------------------------------------------------------------------
# Ranks. A multi-rank case runs as N copies of this script started with `--rank DEVICE` and the
# torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank 0
# reads each request from stdin and broadcasts it, so every rank handles the same request in
# lockstep (the collectives inside a workload then match); rank 0 answers. A non-zero rank that
# cannot handle a request writes its reply to its own stdout and exits, which tagbench reads to
# fail the case naming that rank.

DIST = None

# Tests: the rank named in the first exits at setup, as a crashing rank would; the one named in
# the second hangs there, as a rank stuck in a driver call would.
CRASH_RANK_ENV = "TAGBENCH_TEST_CRASH_RANK"
HANG_RANK_ENV = "TAGBENCH_TEST_HANG_RANK"


class Dist:
    """The process group of a multi-rank case: the data group (NCCL on GPUs, gloo on the CPU)
    and a gloo group for the control messages (requests, small CPU tensors)."""

    def __init__(self, dev):
        import datetime

        import torch.distributed as dist

        if not dist.is_available():
            raise Skip("this torch (%s) was built without torch.distributed" % torch.__version__)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and not dist.is_nccl_available():
            raise Skip("this torch (%s) was built without NCCL" % torch.__version__)
        if not dist.is_gloo_available():
            raise Skip("this torch (%s) was built without gloo" % torch.__version__)
        timeout = datetime.timedelta(seconds=float(os.environ.get("TAGBENCH_DIST_TIMEOUT_S", "300")))
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        try:
            dist.init_process_group(backend=backend, init_method="env://", timeout=timeout, **kwargs)
        except TypeError:
            # torch before 2.3 has no device_id.
            dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        self.dist = dist
        self.backend = backend
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.ctrl = dist.new_group(backend="gloo") if backend == "nccl" else None
        self.warnings = []
        if backend == "nccl" and self.world > 1:
            # NCCL's intra-node transport lives in /dev/shm; Docker's default 64 MiB is too small.
            try:
                st = os.statvfs("/dev/shm")
                shm = st.f_frsize * st.f_blocks
                if shm < (1 << 30):
                    self.warnings.append(
                        "/dev/shm is %d MiB: NCCL between %d GPU processes may fail or slow down; give the target ipc = \"host\" or a shm_size of 1g or more"
                        % (shm >> 20, self.world)
                    )
            except OSError:
                pass

    def broadcast_line(self, line):
        obj = [line]
        self.dist.broadcast_object_list(obj, src=0, group=self.ctrl)
        return obj[0]

    def max_cpu(self, value):
        """The largest of each rank's float (peak memory per rank: the worst rank)."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.ctrl)
        return float(t.item())

    def mean_cpu(self, value):
        t = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.ctrl)
        return float(t.item()) / self.world

    def stop(self):
        self.dist.destroy_process_group()


def dist_max(value):
    """The largest of the ranks' values (None where no rank measured it); every rank must call."""
    if DIST is None:
        return value
    m = DIST.max_cpu(-1.0 if value is None else value)
    return None if m < 0 else m


def serve_rank(device, proto):
    """The loop of one rank of a multi-rank case."""
    global DIST
    dev = resolve_device(device)
    DIST = Dist(dev)
    state = {}
    while True:
        line = sys.stdin.readline() if DIST.rank == 0 else None
        line = DIST.broadcast_line(line)
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        # Each rank on its own device, whatever rank 0 was told.
        req["device"] = device
        reply = handle_safely(req, state)
        if DIST.rank == 0:
            send(proto, reply)
        elif "ok" not in reply:
            # The others are now inside a collective this rank will never join: say why and
            # leave, so that tagbench fails the case naming this rank instead of waiting.
            send(proto, reply)
            os._exit(3)
    DIST.stop()


# ---------------------------------------------------------------------------------------------
# All-reduce: every rank of the group runs the same calls (nccl-tests' method).


class Allreduce:
    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        if DIST is None:
            raise RuntimeError("all-reduce runs only in a multi-rank launch")
        self.dist = DIST.dist
        self.dt = torch_dtype(p["dtype"], "allreduce")
        op = p["op"]
        if DIST.backend == "gloo" and op == "avg":
            raise Skip("gloo has no AVG reduction (NCCL does): use op = \"sum\" on the CPU")
        ops = {"sum": "SUM", "prod": "PRODUCT", "max": "MAX", "min": "MIN", "avg": "AVG"}
        if not hasattr(self.dist.ReduceOp, ops[op]):
            raise Skip("this torch (%s) has no ReduceOp.%s" % (torch.__version__, ops[op]))
        if not p.get("in_place", False):
            self.warnings.append("torch.distributed.all_reduce works in place: in_place = false is measured in place")
        self.op_name = op
        self.op = getattr(self.dist.ReduceOp, ops[op])
        self.rank, self.world = DIST.rank, DIST.world
        self.elem = torch.tensor([], dtype=self.dt).element_size()
        self.buf = None
        self.iters = 1
        self.facts = {
            "backend": DIST.backend,
            "world_size": self.world,
            "nccl_version": nccl_version() if DIST.backend == "nccl" else "",
        }

    def inputs(self, rank, n):
        # Small integers: every op's exact result is representable in fp16/bf16 too.
        i = torch.arange(n, device=self.dev, dtype=torch.int64)
        return ((i % 3) + 1 + (rank % 2)).to(self.dt)

    def expected(self, n):
        vals = torch.stack([self.inputs(r, n).double() for r in range(self.world)])
        return {
            "sum": vals.sum(0),
            "prod": vals.prod(0),
            "max": vals.max(0).values,
            "min": vals.min(0).values,
            "avg": vals.mean(0),
        }[self.op_name]

    def timed(self, iters):
        """Seconds per all-reduce on the slowest rank (every rank waits for the slowest)."""
        self.dist.barrier()
        buf, op, allreduce = self.buf, self.op, self.dist.all_reduce
        dt = time_iters(self.dev, lambda: allreduce(buf, op=op), iters)
        t = torch.tensor([dt], dtype=torch.float64, device=self.dev)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())

    def size(self, nbytes):
        """Allocates the buffer, checks one all-reduce (wrong elements over all ranks) and
        calibrates the calls per sample; every rank computes the same count from the same max."""
        nelem = max(1, nbytes // self.elem)
        self.buf = self.inputs(self.rank, nelem)
        self.dist.all_reduce(self.buf, op=self.op)
        sync(self.dev)
        want = self.expected(nelem)
        tol = 1e-6 if self.dt == torch.float32 else 1e-2
        wrong = (~torch.isclose(self.buf.double(), want, rtol=tol, atol=0.0)).sum().to(torch.int64)
        self.dist.all_reduce(wrong, op=self.dist.ReduceOp.SUM)
        # Timing runs on finite, bounded values: sums and products would grow every iteration.
        self.buf = torch.ones(nelem, device=self.dev, dtype=self.dt)
        self.timed(1)
        once = self.timed(1)
        self.iters = max(1, min(MAX_ITERS, int(math.ceil(MIN_SAMPLE_S / once)))) if once > 0 else MAX_ITERS
        return {"wrong": int(wrong.item()), "iters": self.iters, "elements": nelem}

    def run(self):
        return {"seconds": self.timed(self.iters)}

    def finish(self):
        return {}


def nccl_version():
    try:
        v = torch.cuda.nccl.version()
        return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    except Exception:  # noqa: BLE001 - a torch without NCCL support raises various errors
        return ""


# ---------------------------------------------------------------------------------------------
# Probe


def probe(dev):
    info = {
        "python_version": sys.version.split()[0],
        "torch_version": torch.__version__,
        "torch_cuda": str(torch.version.cuda or ""),
        "torch_threads": str(torch.get_num_threads()),
        "torch_mkldnn": str(torch.backends.mkldnn.is_available()),
    }
    try:
        info["torch_cudnn"] = str(torch.backends.cudnn.version() or "")
    except Exception:  # noqa: BLE001 - no cuDNN in a CPU build
        info["torch_cudnn"] = ""
    info["torch_nccl"] = nccl_version() if torch.cuda.is_available() else ""
    info["torch_arch_list"] = " ".join(torch.cuda.get_arch_list()) if torch.version.cuda else ""
    info["torch_tf32_matmul_default"] = str(torch.backends.cuda.matmul.allow_tf32)
    info["torch_tf32_cudnn_default"] = str(torch.backends.cudnn.allow_tf32)
    warnings = []
    status = "torch %s on CPU (%s threads)" % (torch.__version__, info["torch_threads"])
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        cap = torch.cuda.get_device_capability(dev)
        arch = "sm_%d%d" % cap
        arches = torch.cuda.get_arch_list()
        # A GPU without its own cubin in the build runs PTX JIT-compiled for an older arch (slow
        # first calls, sometimes missing kernels) or not at all.
        supported = arch in arches
        ptx_ok = any(a.startswith("compute_") and int(a.split("_")[1]) <= cap[0] * 10 + cap[1] for a in arches)
        info.update(
            {
                "gpu_name": props.name,
                "gpu_count": str(torch.cuda.device_count()),
                "compute_capability": "%d.%d" % cap,
                "sm_count": str(props.multi_processor_count),
                "gpu_memory_mib": str(props.total_memory // 2**20),
                "torch_gpu_arch_in_arch_list": str(supported),
            }
        )
        if not supported:
            warnings.append(
                "%s is not in torch.cuda.get_arch_list() (%s): %s"
                % (arch, " ".join(arches), "kernels are JIT-compiled from PTX" if ptx_ok else "this torch build cannot run on this GPU")
            )
        status = "torch %s, CUDA %s, cuDNN %s, NCCL %s on %s (%s, %s in arch list: %s)" % (
            torch.__version__,
            info["torch_cuda"],
            info["torch_cudnn"],
            info["torch_nccl"],
            props.name,
            arch,
            arch,
            "yes" if supported else "no",
        )
    return {"status": status, "env": info, "warnings": warnings}


# ---------------------------------------------------------------------------------------------
# The protocol loop

WORKLOADS = {"gemm": Gemm, "attention": Attention, "generate": Generate, "precision": Precision, "allreduce": Allreduce}


def mapped_objects():
    """The shared objects mapped into this process, each once, in the order first mapped."""
    seen, out = set(), []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) == 6 else ""
                name = os.path.basename(path)
                if not path.startswith("/") or path.endswith(" (deleted)"):
                    continue
                if (name.endswith(".so") or ".so." in name) and path not in seen:
                    seen.add(path)
                    out.append(path)
    except OSError:
        pass
    return out


def distributions(loaded, modules):
    """The Python distributions importable here, and whether this run imported one of their
    `modules` or loaded one of their shared objects (`loaded` paths; namespace packages such as
    `nvidia`, shared by several distributions, do not count as imported by themselves)."""
    import importlib.metadata as md

    loaded = {os.path.realpath(p) for p in loaded}
    imported = {name.split(".")[0] for name in modules}
    out, seen = [], set()
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        used = False
        tops = set()
        for f in dist.files or []:
            parts = f.parts
            top = parts[0] if parts else ""
            if top and top != ".." and top != "__pycache__":
                tops.add(top)
            if used or top.endswith(".dist-info") or top == "..":
                continue
            package = len(parts) == 2 and parts[1] == "__init__.py" and top in imported
            module = len(parts) == 1 and top.endswith(".py") and top[:-3] in imported
            shared = (f.name.endswith(".so") or ".so." in f.name) and os.path.realpath(str(dist.locate_file(f))) in loaded
            used = package or module or shared
        out.append(
            {
                "name": name,
                "version": dist.version or "",
                "imported": used,
                "location": str(dist.locate_file("")),
                "top_level": sorted(tops),
            }
        )
    return out


def handle(req, state):
    op = req.get("op")
    if op == "components":
        maps = mapped_objects()
        return {"ok": {"maps": maps, "distributions": distributions(maps, list(sys.modules))}}
    if op == "hello":
        if torch is None:
            return {"skip": "torch not importable in image: %s" % TORCH_ERROR}
        return {
            "ok": {
                "python_version": sys.version.split()[0],
                "torch_version": torch.__version__,
                "torch_cuda": str(torch.version.cuda or ""),
                "cuda_available": torch.cuda.is_available(),
                "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            }
        }
    if torch is None:
        return {"skip": "torch not importable in image: %s" % TORCH_ERROR}
    if op == "setup":
        state.pop("bench", None)
        if req["kind"] == "probe":
            # The versions are worth reporting even where torch cannot use the GPU.
            try:
                return {"ok": probe(resolve_device(req["device"]))}
            except Skip as e:
                found = probe(torch.device("cpu"))
                found["status"] += "; no GPU: %s" % e
                found["warnings"].append(str(e))
                return {"ok": found}
        dev = resolve_device(req["device"])
        if DIST is not None and os.environ.get(CRASH_RANK_ENV) == str(DIST.rank):
            sys.stderr.write("%s=%d: rank %d exits at setup\n" % (CRASH_RANK_ENV, DIST.rank, DIST.rank))
            sys.stderr.flush()
            os._exit(7)
        if DIST is not None and os.environ.get(HANG_RANK_ENV) == str(DIST.rank):
            sys.stderr.write("%s=%d: rank %d hangs at setup\n" % (HANG_RANK_ENV, DIST.rank, DIST.rank))
            sys.stderr.flush()
            while True:
                time.sleep(3600)
        cls = WORKLOADS.get(req["kind"])
        if cls is None:
            return {"error": "the torch worker has no workload %s" % req["kind"]}
        bench = cls(req, dev)
        state["bench"] = bench
        facts = dict(getattr(bench, "facts", {}))
        facts.update(gpu_facts(dev))
        warnings = list(bench.warnings) + (DIST.warnings if DIST is not None else [])
        return {"ok": {"facts": facts, "warnings": warnings}}
    bench = state.get("bench")
    if bench is None:
        return {"error": "%s without a set-up case" % op}
    if op == "run":
        return {"ok": bench.run()}
    if op == "size":
        return {"ok": bench.size(int(req["bytes"]))}
    if op == "finish":
        state.pop("bench", None)
        out = bench.finish()
        del bench
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"ok": out}
    return {"error": "unknown request %r" % op}


def handle_safely(req, state):
    try:
        return handle(req, state)
    except Skip as e:
        return {"skip": str(e)}
    except Exception as e:  # noqa: BLE001 - every failure goes back to tagbench as a case error
        traceback.print_exc(file=sys.stderr)
        # The first lines of torch's (often long) messages; the whole traceback is in the log.
        return {"error": "\n".join(("%s: %s" % (type(e).__name__, e)).strip().splitlines()[:3])[:2000]}


# Every reply starts with the token tagbench drew for this process, so that what a sitecustomize
# printed on stdout before main() took it over is never read as a reply.
REPLY_TOKEN = os.environ.get("TAGBENCH_REPLY_TOKEN", "")


def send(proto, reply):
    """Writes one reply line behind the token and flushes it."""
    line = json.dumps(reply)
    proto.write((REPLY_TOKEN + " " + line if REPLY_TOKEN else line) + "\n")
    proto.flush()


def main():
    global torch, TORCH_ERROR
    # The protocol owns the real stdout; everything else written to fd 1 goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if sys.argv[1:] == ["--distributions"]:
        # The native engine's question for a `command` case's programs: what the image's python
        # can import. Torch is not imported for it, and nothing counts as imported by this run.
        send(proto, {"ok": {"distributions": distributions([], [])}})
        return
    try:
        import torch as _torch

        torch = _torch
    except Exception as e:  # noqa: BLE001 - any import failure means the same: no torch here
        TORCH_ERROR = ("%s: %s" % (type(e).__name__, e)).splitlines()[0]

    if len(sys.argv) > 2 and sys.argv[1] == "--rank":
        if torch is None:
            send(proto, {"skip": "torch not importable in image: %s" % TORCH_ERROR})
            sys.exit(3)
        try:
            serve_rank(sys.argv[2], proto)
        except Exception as e:  # noqa: BLE001 - a rank that cannot start says why, then leaves
            traceback.print_exc(file=sys.stderr)
            reply = {"skip": str(e)} if isinstance(e, Skip) else {"error": ("%s: %s" % (type(e).__name__, e)).splitlines()[0][:2000]}
            send(proto, reply)
            sys.exit(3)
        return

    state = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        reply = handle_safely(json.loads(line), state)
        send(proto, reply)


if __name__ == "__main__":
    main()
