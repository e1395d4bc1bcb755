"""Token generation: greedy decoding of a Llama-shaped model with random weights, one generation
(prefill and every decode step) per sample; TTFT and TPOT are reported with it."""

import hashlib
import time

import torch

from . import Skip, ranks
from .compile import Compile, agree
from .device import element_size, mem_available_bytes, mem_peak_mib, mem_reset, set_tf32, torch_dtype
from .llama import Llama


def check_memory(shape, dt, dev, world):
    """A skip when the weights cannot fit in what the device has free."""
    weights = shape["parameters"] * element_size(dt) / world
    if dev.type == "cpu":
        # Every rank of a CPU case shares the host's memory.
        weights *= world
    avail = mem_available_bytes(dev)
    if avail is not None and weights * 1.2 > avail:
        raise Skip(
            f"the model needs {weights / 2**30:.1f} GiB for its weights and {avail / 2**30:.1f} GiB of memory "
            "is available (lower `layers`)"
        )


def prompt_tokens(shape, batch, prompt_len, dev):
    """The seeded random prompt, the same for every implementation and rank."""
    g = torch.Generator(device="cpu").manual_seed(1)
    return torch.randint(0, shape["vocab"], (batch, prompt_len), generator=g).to(dev)


def tokens_hash(tokens):
    """A short hash of the generated tokens [b, n]: what a reader compares across cases."""
    return hashlib.sha256(str(tokens.cpu().tolist()).encode()).hexdigest()[:16]


class GenerationStats:
    """What every implementation reports: per sample TTFT, TPOT (and the all-reduce share of a
    tensor-parallel decode), at the end the peak memory (the worst rank's) and the tokens' hash."""

    def __init__(self, tracked):
        self.tracked = tracked
        self.tokens_hash = ""

    def sample(self, tokens, ttft, steps, comm=None):
        """The run reply of one generation; its tokens' hash is kept."""
        self.tokens_hash = tokens_hash(tokens)
        values = {"ttft_s": ttft}
        if steps:
            values["tpot_s"] = sum(steps) / len(steps)
            if comm is not None:
                values["allreduce_share_pct"] = 100.0 * comm / sum(steps)
        return {"seconds": ttft + sum(steps), "values": values}

    def finish(self, dev):
        """The finish reply."""
        peak = ranks.dist_max(mem_peak_mib(dev) if self.tracked else None)
        out = {"tokens_hash": self.tokens_hash}
        if peak is not None:
            out["peak_memory_mib"] = peak
        return out


def compile_forward(compiler, model, prefill, generate, p):
    """Compiles `model.forward` with `compiler` (a Compile): the first generation (compilation
    included) is timed, and the prompt's last logits (`prefill()`) must then agree with eager's."""
    with torch.inference_mode():
        want = prefill()
    model.forward = compiler.wrap(model.forward)
    compiler.first(generate)
    with torch.inference_mode():
        got = prefill()
    agree(got, want, p["dtype"], "logits")


def create(req, dev):
    """The generation of the case's `impl`: the hand-written loop, or transformers' generate."""
    impl = req["params"].get("impl") or "loop"
    if impl == "hf":
        from .hf import HfGenerate

        return HfGenerate(req, dev)
    if (req["params"].get("cache") or "dynamic") != "dynamic":
        raise Skip('cache applies to impl = "hf": the loop preallocates its KV cache')
    return Generate(req, dev)


class Generate:
    """The hand-written decode loop (`impl = "loop"`), on one rank or as a tensor-parallel shard."""

    def __init__(self, req, dev):
        p = req["params"]
        shape = req["shape"]
        self.dev = dev
        self.warnings = []
        tp = int(p.get("tensor_parallel") or 1)
        rank, world = ranks.rank_and_world()
        if tp != world:
            raise RuntimeError(f"tensor_parallel = {tp} but the case runs on {world} rank(s)")
        dt = torch_dtype(p["dtype"], "generate")
        check_memory(shape, dt, dev, world)
        if world > 1 and (p.get("compile") or "none") != "none":
            raise Skip("compile with tensor_parallel > 1 is not measured: the loop times each all-reduce")
        self.compile = Compile(p, dev)
        if dev.type == "cuda":
            set_tf32(False)
        self.batch, self.prompt_len, self.new_tokens = p["batch"], p["prompt_len"], p["new_tokens"]
        with torch.inference_mode():
            self.model = Llama(shape, dt, dev, self.batch, self.prompt_len + self.new_tokens, rank, world)
            self.prompt = prompt_tokens(shape, self.batch, self.prompt_len, dev)
        if self.compile.on:
            compile_forward(self.compile, self.model, lambda: self.model.forward(self.prompt, 0), self.generate, p)
        # After the build: the whole-tensor temporaries each rank slices from are not its memory.
        self.stats = GenerationStats(mem_reset(dev))
        self.facts = {"sdpa_gqa": self.model.gqa, "tensor_parallel": world, **self.compile.facts()}

    def step(self, tokens, start):
        """The next greedy token after `tokens` at `start`, read back to the host (as a server
        returning it would, which also forces the computation)."""
        nxt = self.model.forward(tokens, start).argmax(-1, keepdim=True)
        nxt[0, 0].item()
        return nxt

    def generate(self):
        """One generation: (tokens [b, new_tokens], TTFT s, seconds of each decode step)."""
        with torch.inference_mode():
            t = time.perf_counter()
            nxt = self.step(self.prompt, 0)
            ttft = time.perf_counter() - t
            self.model.comm_seconds()
            tokens = [nxt]
            steps = []
            for i in range(1, self.new_tokens):
                t = time.perf_counter()
                nxt = self.step(nxt, self.prompt_len + i - 1)
                steps.append(time.perf_counter() - t)
                tokens.append(nxt)
        return torch.cat(tokens, dim=-1), ttft, steps

    def run(self):
        """One sample: a whole generation, with TTFT, TPOT and the all-reduce share."""
        tokens, ttft, steps = self.generate()
        comm = self.model.comm_seconds()
        # The generated tokens are hashed: tensor_parallel = N must give those of N = 1.
        return self.stats.sample(tokens, ttft, steps, comm if self.model.world > 1 else None)

    def finish(self):
        """The peak memory (the worst rank's) and the tokens' hash."""
        return self.stats.finish(self.dev)
