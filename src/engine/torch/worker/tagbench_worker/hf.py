"""Token generation through the image's Hugging Face transformers (`impl = "hf"`).

LlamaForCausalLM built from a config of the case's shape (`from_config`: no hub access), its
weights the hand-written loop's (llama.full_weights: seeded, never zeros), then `model.generate`
with greedy decoding and exactly `new_tokens` new tokens. TTFT and TPOT come from a streamer,
which generate hands every token as it is produced (after reading it back to the host).
"""

import time

import torch

from . import Skip, ranks
from .compile import Compile
from .device import mem_reset, set_tf32, torch_dtype
from .generate import GenerationStats, check_memory, compile_forward, prompt_tokens
from .llama import full_weights


def import_transformers():
    """The transformers module; a skip that says why where it cannot be imported."""
    try:
        import transformers
    except Exception as e:  # missing, or broken against this torch: the same skip
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise Skip(f"transformers not importable in image ({reason})") from e
    return transformers


def version():
    """The installed transformers' version without importing it, or empty."""
    try:
        import importlib.metadata as md

        return md.version("transformers")
    except Exception:  # noqa: BLE001 - not installed, or no metadata: nothing to report
        return ""


def llama_config(transformers, shape):
    """A LlamaConfig of the case's shape, with no end-of-sequence token (greedy decoding then
    never stops early nor has a token masked, as the loop's)."""
    return transformers.LlamaConfig(
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        vocab_size=shape["vocab"],
        max_position_embeddings=shape["max_positions"],
        rope_theta=float(shape["rope_theta"]),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )


def from_config(transformers, config, dt):
    """AutoModelForCausalLM.from_config in `dt` (`dtype` since transformers 4.56, `torch_dtype`
    before)."""
    auto = transformers.AutoModelForCausalLM
    try:
        return auto.from_config(config, dtype=dt)
    except TypeError:
        return auto.from_config(config, torch_dtype=dt)


@torch.no_grad()
def load_loop_weights(model, shape, dt, dev):
    """Copies the loop's weights into transformers' Llama (RMSNorm weights are ones in both)."""
    h = shape["hidden"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    inter = shape["intermediate"]
    layers = model.model.layers
    for name, i, w in full_weights(shape, dt, dev):
        if name == "embed":
            model.model.embed_tokens.weight.copy_(w)
        elif name == "head":
            model.lm_head.weight.copy_(w)
        elif name == "wqkv":
            attn = layers[i].self_attn
            q, k, v = w.split([h, kv, kv])
            attn.q_proj.weight.copy_(q)
            attn.k_proj.weight.copy_(k)
            attn.v_proj.weight.copy_(v)
        elif name == "wo":
            layers[i].self_attn.o_proj.weight.copy_(w)
        elif name == "wgu":
            gate, up = w.split([inter, inter])
            layers[i].mlp.gate_proj.weight.copy_(gate)
            layers[i].mlp.up_proj.weight.copy_(up)
        else:
            layers[i].mlp.down_proj.weight.copy_(w)
    for layer in layers:
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
    model.model.norm.weight.fill_(1.0)


class TokenTimes:
    """A streamer (transformers' put/end interface) that notes when each new token arrives; the
    first put is the prompt."""

    def __init__(self):
        self.times = []
        self.prompt_seen = False

    def reset(self):
        """Before a generation."""
        self.times = []
        self.prompt_seen = False

    def put(self, value):
        """generate hands over the prompt, then each new token (already on the host)."""
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        """generate has finished."""


class HfGenerate:
    """`model.generate` of transformers' LlamaForCausalLM, on one device."""

    def __init__(self, req, dev):
        p = req["params"]
        shape = req["shape"]
        self.dev = dev
        self.warnings = []
        if ranks.current() is not None or int(p.get("tensor_parallel") or 1) != 1:
            raise Skip('impl = "hf" generates on one device: tensor_parallel > 1 needs impl = "loop"')
        transformers = import_transformers()
        dt = torch_dtype(p["dtype"], "generate")
        self.compile = Compile(p, dev)
        check_memory(shape, dt, dev, 1)
        if dev.type == "cuda":
            set_tf32(False)
        cache = p.get("cache") or "dynamic"
        if cache == "static" and not hasattr(transformers, "StaticCache"):
            raise Skip(f"this transformers ({transformers.__version__}) has no static cache")
        with torch.device(dev):
            self.model = from_config(transformers, llama_config(transformers, shape), dt)
        load_loop_weights(self.model, shape, dt, dev)
        self.model.eval()
        self.new_tokens = p["new_tokens"]
        self.prompt_len = p["prompt_len"]
        options = {
            "max_new_tokens": self.new_tokens,
            "min_new_tokens": self.new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "eos_token_id": None,
            "pad_token_id": 0,
            # transformers compiles the forward of a static cache by itself (4.50+): the case's
            # `compile` decides instead.
            "disable_compile": True,
        }
        if cache != "dynamic":
            options["cache_implementation"] = cache
        self.generation_config = transformers.GenerationConfig(**options)
        self.prompt = prompt_tokens(shape, p["batch"], self.prompt_len, dev)
        self.mask = torch.ones_like(self.prompt)
        self.times = TokenTimes()
        if self.compile.on:
            compile_forward(self.compile, self.model, self._prefill, self.generate, p)
        self.stats = GenerationStats(mem_reset(dev))
        attn = getattr(self.model.config, "_attn_implementation", "") or ""
        self.facts = {
            "transformers_version": transformers.__version__,
            "attn_implementation": attn,
            **self.compile.facts(),
        }

    def _prefill(self):
        """The logits of the prompt's last position."""
        return self.model(self.prompt, attention_mask=self.mask).logits[:, -1]

    def generate(self):
        """One generation: (tokens [b, new_tokens], TTFT s, seconds of each decode step)."""
        self.times.reset()
        with torch.inference_mode():
            t = time.perf_counter()
            out = self.model.generate(
                self.prompt,
                attention_mask=self.mask,
                generation_config=self.generation_config,
                streamer=self.times,
            )
        arrived = [t, *self.times.times]
        if len(arrived) != self.new_tokens + 1:
            raise RuntimeError(f"generate streamed {len(arrived) - 1} tokens, not {self.new_tokens}")
        steps = [b - a for a, b in zip(arrived[1:], arrived[2:])]
        return out[:, self.prompt_len :], arrived[1] - t, steps

    def run(self):
        """One sample: a whole generation, with TTFT and TPOT."""
        return self.stats.sample(*self.generate())

    def finish(self):
        """The peak memory and the tokens' hash."""
        return self.stats.finish(self.dev)
