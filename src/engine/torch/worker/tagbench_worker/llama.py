"""A Llama-architecture decoder in plain torch, for the hand-written decode loop (`impl = "loop"`)."""

import time

import torch

from . import Skip, ranks
from .attention import supports_gqa


def seeded_weight(seed, out_f, in_f, dt, dev):
    """An [out_f, in_f] weight drawn from N(0, 0.02) with its own seed, as Hugging Face
    initialises Llama; never zeros (zeros run unrealistically fast). The same on every rank."""
    if dev.type == "cuda":
        g = torch.Generator(device=dev).manual_seed(seed)
        return torch.empty(out_f, in_f, dtype=dt, device=dev).normal_(0.0, 0.02, generator=g)
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g).mul_(0.02).to(dt)


def full_weights(shape, dt, dev):
    """The model's matrices, whole, each drawn from its own seed in one fixed order: the
    embedding, then per layer wqkv (q, k, v rows), wo, wgu (gate, up rows), wd, then the LM head.
    Yields (name, layer index or None, tensor), one at a time: what the loop shards and what
    `hf.py` loads into transformers' model, so that both decode the same model."""
    h, inter, vocab = shape["hidden"], shape["intermediate"], shape["vocab"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    seed = 0

    def draw(out_f, in_f):
        nonlocal seed
        seed += 1
        return seeded_weight(seed, out_f, in_f, dt, dev)

    yield "embed", None, draw(vocab, h)
    for i in range(shape["layers"]):
        yield "wqkv", i, draw(h + 2 * kv, h)
        yield "wo", i, draw(h, h)
        yield "wgu", i, draw(2 * inter, h)
        yield "wd", i, draw(h, inter)
    yield "head", None, draw(vocab, h)


def rows(t, start, n):
    """Rows start..start+n of `t` (a rank's slice)."""
    return t[start : start + n]


class Llama:
    """RMSNorm, RoPE, GQA, SwiGLU MLP and a KV cache with random weights: the shapes of the real
    model, none of its files.

    With `world` > 1 it is this rank's shard, Megatron-LM's tensor parallelism (Shoeybi et al.,
    2019): attention heads and the MLP's gate/up split by columns, o_proj and down_proj by rows
    with one all-reduce after each, embedding and LM head split by vocabulary. Every weight is
    drawn whole from its own seed and then sliced (full_weights), so that all ranks together hold
    exactly the one-rank model and tensor_parallel = N generates the tokens tensor_parallel = 1
    does."""

    def __init__(self, shape, dt, dev, batch, max_len, rank=0, world=1):
        h, inter = shape["hidden"], shape["intermediate"]
        heads, kv_heads, vocab = shape["heads"], shape["kv_heads"], shape["vocab"]
        for name, n in (("heads", heads), ("kv_heads", kv_heads), ("intermediate", inter), ("vocab", vocab)):
            if n % world:
                raise Skip(f"tensor_parallel = {world} must divide {name} ({n})")
        self.hd = h // heads
        self.heads, self.kv_heads = heads // world, kv_heads // world
        self.inter = inter // world
        self.vocab = vocab // world
        self.vstart = rank * self.vocab
        self.rank, self.world = rank, world
        self.dev, self.dt = dev, dt
        self.comm = []
        self.q, self.kv = self.heads * self.hd, self.kv_heads * self.hd
        self.layers = [
            {
                "ln1": torch.ones(h, dtype=dt, device=dev),
                "ln2": torch.ones(h, dtype=dt, device=dev),
                "k": torch.zeros(batch, self.kv_heads, max_len, self.hd, dtype=dt, device=dev),
                "v": torch.zeros(batch, self.kv_heads, max_len, self.hd, dtype=dt, device=dev),
            }
            for _ in range(shape["layers"])
        ]
        for name, layer, w in full_weights(shape, dt, dev):
            if layer is None:
                setattr(self, name, rows(w, self.vstart, self.vocab).clone())
            else:
                self.layers[layer][name] = self._shard(name, w, h, kv_heads * self.hd, inter)
        self.norm = torch.ones(h, dtype=dt, device=dev)
        inv = 1.0 / (float(shape["rope_theta"]) ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        self.cos = freqs.cos().to(dev)
        self.sin = freqs.sin().to(dev)
        self.gqa = supports_gqa()

    def _shard(self, name, w, h, kv_full, inter):
        """This rank's part of a layer's whole matrix `name`."""
        r, q, kv, i = self.rank, self.q, self.kv, self.inter
        if name == "wqkv":
            return torch.cat((rows(w, r * q, q), rows(w, h + r * kv, kv), rows(w, h + kv_full + r * kv, kv)))
        if name == "wo":
            return w[:, r * q : (r + 1) * q].contiguous()
        if name == "wgu":
            return torch.cat((rows(w, r * i, i), rows(w, inter + r * i, i)))
        return w[:, r * i : (r + 1) * i].contiguous()

    @staticmethod
    def rms(x, w):
        """RMSNorm in fp32, eps 1e-5."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w

    def rope(self, x, start):
        """Rotary embedding of x: [b, heads, s, hd] at positions start.., rotating the two halves
        (Hugging Face's rotate_half convention)."""
        s = x.shape[2]
        cos = self.cos[start : start + s].to(x.dtype)
        sin = self.sin[start : start + s].to(x.dtype)
        x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2 :]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def all_reduce(self, x):
        """Sums the ranks' partial results, timing the call (its share of decode is a metric)."""
        dist = ranks.current().dist
        if self.dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_reduce(x)
            end.record()
            self.comm.append((start, end))
        else:
            t = time.perf_counter()
            dist.all_reduce(x)
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

    def _embed(self, tokens):
        """The token embeddings (each rank looks up its slice of the vocabulary, then all-reduce)."""
        F = torch.nn.functional
        if self.world == 1:
            return F.embedding(tokens, self.embed)
        local = tokens - self.vstart
        outside = (local < 0) | (local >= self.vocab)
        x = F.embedding(local.masked_fill(outside, 0), self.embed)
        return self.all_reduce(x.masked_fill(outside.unsqueeze(-1), 0))

    def _attention(self, L, a, start):
        """Self-attention of one layer over the cache, new keys and values written at `start`."""
        F = torch.nn.functional
        b, s, _ = a.shape
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
        return y.transpose(1, 2).reshape(b, s, self.q) @ L["wo"].t()

    def forward(self, tokens, start):
        """Logits of the last position for `tokens` [b, s] at positions start.."""
        F = torch.nn.functional
        x = self._embed(tokens)
        for L in self.layers:
            o = self._attention(L, self.rms(x, L["ln1"]), start)
            x = x + (self.all_reduce(o) if self.world > 1 else o)
            m = self.rms(x, L["ln2"])
            gate, up = (m @ L["wgu"].t()).split([self.inter, self.inter], dim=-1)
            d = (F.silu(gate) * up) @ L["wd"].t()
            x = x + (self.all_reduce(d) if self.world > 1 else d)
        # Logits of the last position only, as serving engines compute them.
        logits = self.rms(x[:, -1], self.norm) @ self.head.t()
        if self.world > 1:
            # Each rank holds a slice of the vocabulary: gather the whole row for the argmax.
            parts = [torch.empty_like(logits) for _ in range(self.world)]
            ranks.current().dist.all_gather(parts, logits.contiguous())
            logits = torch.cat(parts, dim=-1)
        return logits
