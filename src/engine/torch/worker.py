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

`--follower` runs a non-zero rank of an all-reduce group: it takes its orders from rank 0 through
torch.distributed broadcasts. Only torch and the standard library are used, and the code runs on
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
        return {"seconds": time_iters(self.dev, self.op, self.iters)}

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
        return {"seconds": time_iters(self.dev, self.op, self.iters)}

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
    random weights: the shapes of the real model, none of its files."""

    def __init__(self, shape, dt, dev, batch, max_len):
        h, inter = shape["hidden"], shape["intermediate"]
        self.heads, self.kv_heads = shape["heads"], shape["kv_heads"]
        self.hd = h // self.heads
        self.dev, self.dt = dev, dt
        g = torch.Generator(device="cpu").manual_seed(0)

        def w(out_f, in_f):
            # N(0, 0.02) as Hugging Face initialises Llama; never zeros (zeros run unrealistically fast).
            t = torch.empty(out_f, in_f, dtype=dt, device=dev)
            return t.normal_(0.0, 0.02) if dev.type == "cuda" else torch.randn(out_f, in_f, generator=g).mul_(0.02).to(dt)

        kv = self.kv_heads * self.hd
        self.embed = w(shape["vocab"], h)
        self.layers = []
        for _ in range(shape["layers"]):
            self.layers.append(
                {
                    "ln1": torch.ones(h, dtype=dt, device=dev),
                    "wqkv": w(h + 2 * kv, h),
                    "wo": w(h, h),
                    "ln2": torch.ones(h, dtype=dt, device=dev),
                    "wgu": w(2 * inter, h),
                    "wd": w(h, inter),
                    "k": torch.zeros(batch, self.kv_heads, max_len, self.hd, dtype=dt, device=dev),
                    "v": torch.zeros(batch, self.kv_heads, max_len, self.hd, dtype=dt, device=dev),
                }
            )
        self.norm = torch.ones(h, dtype=dt, device=dev)
        self.head = w(shape["vocab"], h)
        inv = 1.0 / (float(shape["rope_theta"]) ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        pos = torch.arange(max_len, dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        self.cos = freqs.cos().to(dev)
        self.sin = freqs.sin().to(dev)
        self.gqa = supports_gqa()
        self.inter = inter
        self.kv = kv

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

    def forward(self, tokens, start):
        F = torch.nn.functional
        b, s = tokens.shape
        x = F.embedding(tokens, self.embed)
        h = x.shape[-1]
        for L in self.layers:
            a = self.rms(x, L["ln1"])
            qkv = a @ L["wqkv"].t()
            q, k, v = qkv.split([h, self.kv, self.kv], dim=-1)
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
            x = x + y.transpose(1, 2).reshape(b, s, h) @ L["wo"].t()
            m = self.rms(x, L["ln2"])
            gate, up = (m @ L["wgu"].t()).split([self.inter, self.inter], dim=-1)
            x = x + (F.silu(gate) * up) @ L["wd"].t()
        # Logits of the last position only, as serving engines compute them.
        last = self.rms(x[:, -1], self.norm)
        return last @ self.head.t()


class Generate:
    def __init__(self, req, dev):
        p = req["params"]
        shape = req["shape"]
        self.dev = dev
        self.warnings = []
        dt = torch_dtype(p["dtype"], "generate")
        elem = torch.tensor([], dtype=dt).element_size()
        weights = shape["parameters"] * elem
        avail = mem_available_bytes(dev)
        if avail is not None and weights * 1.2 > avail:
            raise Skip(
                "the model needs %.1f GiB for its weights and %.1f GiB of memory is available (lower `layers`)"
                % (weights / 2**30, avail / 2**30)
            )
        if dev.type == "cuda":
            set_tf32(False)
        self.batch, self.prompt_len, self.new_tokens = p["batch"], p["prompt_len"], p["new_tokens"]
        self.tracked = mem_reset(dev)
        with torch.inference_mode():
            self.model = Llama(shape, dt, dev, self.batch, self.prompt_len + self.new_tokens)
            g = torch.Generator(device="cpu").manual_seed(1)
            self.prompt = torch.randint(0, shape["vocab"], (self.batch, self.prompt_len), generator=g).to(dev)
        self.facts = {"sdpa_gqa": self.model.gqa}

    def run(self):
        with torch.inference_mode():
            t = time.perf_counter()
            logits = self.model.forward(self.prompt, 0)
            nxt = logits.argmax(-1, keepdim=True)
            # Reading the token back forces the computation, as a server returning it would.
            nxt[0, 0].item()
            ttft = time.perf_counter() - t
            steps = []
            for i in range(1, self.new_tokens):
                t = time.perf_counter()
                logits = self.model.forward(nxt, self.prompt_len + i - 1)
                nxt = logits.argmax(-1, keepdim=True)
                nxt[0, 0].item()
                steps.append(time.perf_counter() - t)
        values = {"ttft_s": ttft}
        if steps:
            values["tpot_s"] = sum(steps) / len(steps)
        return {"seconds": ttft + sum(steps), "values": values}

    def finish(self):
        peak = mem_peak_mib(self.dev) if self.tracked else None
        return {"peak_memory_mib": peak} if peak is not None else {}


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
        g = torch.Generator(device="cpu").manual_seed(1)
        self.x = torch.randn(*shape, generator=g).to(dev)
        self.target = torch.randn(*shape, generator=g).to(dev)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        if self.autocast == torch.float16:
            self.scaler = make_grad_scaler(dev)
        self.batch = p["batch"]
        loss = float("nan")
        for _ in range(NUMERICS_STEPS):
            loss = self.step()
        self.tracked = mem_reset(dev)
        self.facts = {"loss": loss, "grad_scaler": self.scaler is not None}

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
        peak = mem_peak_mib(self.dev) if self.tracked else None
        return {"peak_memory_mib": peak} if peak is not None else {}


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
# All-reduce: rank 0 answers the protocol and orders the other ranks through broadcasts.

CMD_STOP, CMD_SIZE, CMD_RUN = 0, 1, 2


class AllreduceGroup:
    """Shared by every rank: the same calls in the same order on each, as collectives need."""

    def __init__(self, dev, dtype, op, backend):
        import datetime

        import torch.distributed as dist

        self.dist = dist
        self.dev = dev
        self.dt = torch_dtype(dtype, "allreduce")
        ops = {"sum": "SUM", "prod": "PRODUCT", "max": "MAX", "min": "MIN", "avg": "AVG"}
        if not hasattr(dist.ReduceOp, ops[op]):
            raise Skip("this torch (%s) has no ReduceOp.%s" % (torch.__version__, ops[op]))
        self.op_name = op
        self.op = getattr(dist.ReduceOp, ops[op])
        timeout = datetime.timedelta(seconds=float(os.environ.get("TAGBENCH_DIST_TIMEOUT_S", "300")))
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.cmd = torch.zeros(3, dtype=torch.int64, device=dev)
        self.buf = None

    def order(self, cmd, a=0, b=0):
        """Rank 0 sends an order; the others receive it. Returns (cmd, a, b)."""
        if self.rank == 0:
            self.cmd.copy_(torch.tensor([cmd, a, b], dtype=torch.int64))
        self.dist.broadcast(self.cmd, src=0)
        c = self.cmd.tolist()
        return c[0], c[1], c[2]

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

    def size(self, nelem):
        """Allocates the buffer and checks one all-reduce; returns wrong elements over all ranks."""
        self.buf = self.inputs(self.rank, nelem)
        self.dist.all_reduce(self.buf, op=self.op)
        sync(self.dev)
        want = self.expected(nelem)
        tol = 1e-6 if self.dt == torch.float32 else 1e-2
        wrong = (~torch.isclose(self.buf.double(), want, rtol=tol, atol=0.0)).sum().to(torch.int64)
        self.dist.all_reduce(wrong, op=self.dist.ReduceOp.SUM)
        # Timing runs on finite, bounded values: sums and products would grow every iteration.
        self.buf = torch.ones(nelem, device=self.dev, dtype=self.dt)
        return int(wrong.item())

    def timed(self, iters):
        """Seconds per all-reduce on the slowest rank (every rank waits for the slowest)."""
        self.dist.barrier()
        buf, op, allreduce = self.buf, self.op, self.dist.all_reduce
        dt = time_iters(self.dev, lambda: allreduce(buf, op=op), iters)
        t = torch.tensor([dt], dtype=torch.float64, device=self.dev)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())

    def stop(self):
        self.dist.destroy_process_group()


class Allreduce:
    """Rank 0's side: protocol requests become orders to the group."""

    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        backend = "nccl" if dev.type == "cuda" else "gloo"
        import torch.distributed as dist

        if not dist.is_available():
            raise Skip("this torch (%s) was built without torch.distributed" % torch.__version__)
        if backend == "nccl" and not dist.is_nccl_available():
            raise Skip("this torch (%s) was built without NCCL" % torch.__version__)
        if backend == "gloo" and not dist.is_gloo_available():
            raise Skip("this torch (%s) was built without gloo" % torch.__version__)
        if backend == "gloo" and p["op"] == "avg":
            raise Skip("gloo has no AVG reduction (NCCL does): use op = \"sum\" on the CPU")
        if not p.get("in_place", False):
            self.warnings.append("torch.distributed.all_reduce works in place: in_place = false is measured in place")
        self.group = AllreduceGroup(dev, p["dtype"], p["op"], backend)
        self.elem = torch.tensor([], dtype=self.group.dt).element_size()
        self.iters = 1
        self.facts = {
            "backend": backend,
            "world_size": self.group.world,
            "nccl_version": nccl_version() if backend == "nccl" else "",
        }

    def size(self, nbytes):
        nelem = max(1, nbytes // self.elem)
        g = self.group
        g.order(CMD_SIZE, nelem)
        wrong = g.size(nelem)
        # Calibrate on a few calls: all ranks must agree on the count, so rank 0 decides.
        g.order(CMD_RUN, 1)
        g.timed(1)
        g.order(CMD_RUN, 1)
        once = g.timed(1)
        self.iters = max(1, min(MAX_ITERS, int(math.ceil(MIN_SAMPLE_S / once)))) if once > 0 else MAX_ITERS
        return {"wrong": wrong, "iters": self.iters, "elements": nelem}

    def run(self):
        self.group.order(CMD_RUN, self.iters)
        return {"seconds": self.group.timed(self.iters)}

    def finish(self):
        self.group.order(CMD_STOP)
        self.group.stop()
        return {}


def follower(device):
    """A non-zero rank: do what rank 0 orders until it says stop."""
    dev = resolve_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    req = json.loads(os.environ["TAGBENCH_ALLREDUCE"])
    g = AllreduceGroup(dev, req["dtype"], req["op"], backend)
    while True:
        cmd, a, _ = g.order(0)
        if cmd == CMD_STOP:
            g.stop()
            return
        if cmd == CMD_SIZE:
            g.size(a)
        elif cmd == CMD_RUN:
            g.timed(a)


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


def handle(req, state):
    op = req.get("op")
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
        cls = WORKLOADS.get(req["kind"])
        if cls is None:
            return {"error": "the torch worker has no workload %s" % req["kind"]}
        bench = cls(req, dev)
        state["bench"] = bench
        facts = dict(getattr(bench, "facts", {}))
        facts.update(gpu_facts(dev))
        return {"ok": {"facts": facts, "warnings": bench.warnings}}
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


def main():
    global torch, TORCH_ERROR
    # The protocol owns the real stdout; everything else written to fd 1 goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import torch as _torch

        torch = _torch
    except Exception as e:  # noqa: BLE001 - any import failure means the same: no torch here
        TORCH_ERROR = ("%s: %s" % (type(e).__name__, e)).splitlines()[0]

    if len(sys.argv) > 2 and sys.argv[1] == "--follower":
        if torch is None:
            sys.exit("torch not importable: %s" % TORCH_ERROR)
        follower(sys.argv[2])
        return

    state = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            reply = handle(json.loads(line), state)
        except Skip as e:
            reply = {"skip": str(e)}
        except Exception as e:  # noqa: BLE001 - every failure goes back to tagbench as a case error
            traceback.print_exc(file=sys.stderr)
            # The first lines of torch's (often long) messages; the whole traceback is in the log.
            reply = {"error": "\n".join(("%s: %s" % (type(e).__name__, e)).strip().splitlines()[:3])[:2000]}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


if __name__ == "__main__":
    main()
