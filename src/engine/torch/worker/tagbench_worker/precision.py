"""Training steps in fp32, TF32 and AMP (fp16 with loss scaling, bf16), on one rank or as DDP/FSDP,
eager or compiled."""

import time

import torch

from . import Skip, ranks
from .compile import Compile, agree
from .device import mem_peak_mib, mem_reset, set_tf32, skip_tf32_on_cpu, sync


def fsdp2():
    """FSDP2's fully_shard (torch 2.4+, its home moved in 2.6)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as e:
            raise Skip(f"this torch ({torch.__version__}) has no FSDP2 fully_shard (torch 2.4 or newer)") from e
    return fully_shard


def cpu_fp16_autocast():
    """Whether this torch autocasts to fp16 on the CPU."""
    try:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except (RuntimeError, AssertionError):
        return False


def make_grad_scaler(dev):
    """A GradScaler for the device (torch.amp's, or torch.cuda.amp's on older torch)."""
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        try:
            return amp.GradScaler(dev.type)
        except (TypeError, RuntimeError, AssertionError) as e:
            if dev.type == "cpu":
                raise Skip(f"this torch ({torch.__version__}) has no GradScaler for the CPU: {e}") from e
    if dev.type == "cuda":
        return torch.cuda.amp.GradScaler()
    raise Skip(f"this torch ({torch.__version__}) has no GradScaler for the CPU")


class Block(torch.nn.Module):
    """A pre-norm transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, h, heads):
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.ln1 = nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.wo = nn.Linear(h, h, bias=False)
        self.ln2 = nn.LayerNorm(h)
        self.up = nn.Linear(h, 4 * h, bias=False)
        self.down = nn.Linear(4 * h, h, bias=False)

    def forward(self, x):
        """The block on x: [batch, seq, hidden]."""
        F = torch.nn.functional
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(h, dim=-1)

        def split(t):
            return t.view(b, s, self.heads, h // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        x = x + self.wo(y.transpose(1, 2).reshape(b, s, h))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


# The dtype whose tolerance a compiled model's output is held to, per mode.
MODE_DTYPES = {"fp32": "fp32", "tf32": "tf32", "amp-fp16": "fp16", "amp-bf16": "bf16"}


class Bottleneck(torch.nn.Module):
    """A ResNet bottleneck block (He et al., 2016): 1x1 down to a quarter of the channels, 3x3,
    1x1 back up, each with batch norm, ReLU between, the input added before the last ReLU."""

    def __init__(self, channels):
        super().__init__()
        nn = torch.nn
        mid = channels // 4
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        """The block on x: [batch, channels, height, width]."""
        return torch.relu(self.body(x) + x)


def build_model(p):
    """The model a case trains, the shape of one input batch and its memory format."""
    h = p["hidden"]
    nn = torch.nn
    if p["model"] == "mlp":
        model = nn.Sequential(nn.Linear(h, 4 * h), nn.GELU(), nn.Linear(4 * h, h), nn.GELU(), nn.Linear(h, h))
        return model, (p["batch"], h), torch.contiguous_format
    if p["model"] == "resnet":
        # channels_last: the layout tensor-core convolutions (and AMP's speed-up) want.
        size = p["image_size"]
        return nn.Sequential(Bottleneck(h), Bottleneck(h)), (p["batch"], h, size, size), torch.channels_last
    return Block(h, p["heads"]), (p["batch"], p["seq"], h), torch.contiguous_format


class Precision:
    """One training step (forward, fp32 MSE loss, backward, AdamW) in the case's mode; the loss
    after `numerics_steps` steps (the host's number, shared with the native engine) from a seeded
    start is what the fp32 reference is compared with."""

    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        mode = p["mode"]
        self.autocast = None
        self.scaler = None
        self.last_output = None
        self.compile = Compile(p, dev)
        if dev.type == "cuda":
            set_tf32(mode == "tf32")
        else:
            skip_tf32_on_cpu(dev, mode)
        if mode in ("amp-fp16", "amp-bf16"):
            self.autocast = torch.float16 if mode == "amp-fp16" else torch.bfloat16
            if dev.type == "cpu" and self.autocast == torch.float16 and not cpu_fp16_autocast():
                raise Skip(f"this torch ({torch.__version__}) has no fp16 autocast on the CPU")
        parallel = p.get("parallel") or "none"
        rank, world = ranks.rank_and_world()
        if parallel != "none" and world != int(p.get("ranks") or 1):
            raise RuntimeError(f"parallel = {parallel} over {p.get('ranks')} ranks, but the case runs on {world}")
        torch.manual_seed(0)
        self.model, shape, fmt = build_model(p)
        self.model.to(device=dev, memory_format=fmt)
        # `batch` is the global batch: each rank takes its slice of the same seeded data, so the
        # ranks together see what one rank sees, and the losses can be compared.
        g = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(*shape, generator=g)
        target = torch.randn(*shape, generator=g)
        per = p["batch"] // world
        self.x = x[rank * per : (rank + 1) * per].to(dev).contiguous(memory_format=fmt)
        self.target = target[rank * per : (rank + 1) * per].to(dev).contiguous(memory_format=fmt)
        self._parallelize(parallel, dev)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        if self.autocast == torch.float16:
            self.scaler = make_grad_scaler(dev)
        steps = int(req["numerics_steps"])
        loss = self._compile(MODE_DTYPES.get(mode, "fp32")) if self.compile.on else float("nan")
        for _ in range(steps - 1 if self.compile.on else steps):
            loss = self.step()
        if ranks.current() is not None:
            # The mean of the ranks' slice losses is the loss over the whole batch.
            loss = ranks.current().mean_cpu(loss)
        self.tracked = mem_reset(dev)
        self.facts = {
            "loss": loss,
            "grad_scaler": self.scaler is not None,
            "parallel": parallel,
            "world_size": world,
            **self.compile.facts(),
        }

    def _forward(self):
        """The model's output on the batch, under the case's autocast."""
        if self.autocast is not None:
            with torch.autocast(device_type=self.dev.type, dtype=self.autocast):
                return self.model(self.x)
        return self.model(self.x)

    def _compile(self, dtype):
        """Compiles the model: its first step (forward, backward and optimizer, compilation
        included) is timed and its output checked against eager's; returns that step's loss."""
        with torch.no_grad():
            want = self._forward()
        self.model = self.compile.wrap(self.model)
        loss = self.compile.first(self.step)
        agree(self.last_output, want, dtype, "model output")
        return loss

    def _parallelize(self, parallel, dev):
        """Wraps the model in DDP, or shards it with FSDP2."""
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

    def step(self):
        """One training step; returns its loss (reading it back synchronises the device)."""
        F = torch.nn.functional
        self.opt.zero_grad(set_to_none=True)
        y = self._forward()
        self.last_output = y.detach()
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
        """One sample: one step."""
        sync(self.dev)
        t = time.perf_counter()
        self.step()
        # step() reads the loss back, so the device has finished when it returns.
        return {"seconds": time.perf_counter() - t}

    def finish(self):
        """The peak memory (the worst rank's)."""
        peak = ranks.dist_max(mem_peak_mib(self.dev) if self.tracked else None)
        return {"peak_memory_mib": peak} if peak is not None else {}
