"""A training step of a small transformer block, timed, for tagbench's `command` workload.

Writes one JSON line per timed step to the file named by $TAGBENCH_METRICS (when set):
    {"metric": "step_time", "value": 12.3, "unit": "ms", "better": "lower"}
and a summary line for people on stdout. Uses automatic mixed precision (bf16 autocast) when
CUDA is present, and DistributedDataParallel when WORLD_SIZE > 1 (RANK, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT as torchrun and tagbench set them); only rank 0 writes metrics.
"""

import argparse
import json
import os
import time

import torch
from torch import nn


class Block(nn.Module):
    """A pre-norm transformer block: self-attention and an MLP, each with a residual."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def parse_args() -> argparse.Namespace:
    """The step's shape and how many steps to time."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    return p.parse_args()


def main() -> None:
    """Sets up (distributed when asked), warms up, times the steps, writes the metrics."""
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")

    torch.manual_seed(0)
    model = Block(args.hidden, args.heads).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.seq, args.hidden, device=device)
    target = torch.randn_like(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=cuda
        ):
            loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    times_ms = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times_ms.append((time.perf_counter() - t0) * 1e3)

    path = os.environ.get("TAGBENCH_METRICS")
    if rank == 0 and path:
        tokens = args.batch * args.seq * world
        with open(path, "a", encoding="utf-8") as f:
            for ms in times_ms:
                f.write(
                    json.dumps(
                        {
                            "metric": "step_time",
                            "value": ms,
                            "unit": "ms",
                            "better": "lower",
                        }
                    )
                    + "\n"
                )
                f.write(
                    json.dumps(
                        {
                            "metric": "tokens_per_s",
                            "value": tokens / (ms / 1e3),
                            "unit": "tokens/s",
                            "better": "higher",
                        }
                    )
                    + "\n"
                )
    if rank == 0:
        median = sorted(times_ms)[len(times_ms) // 2]
        amp = "bf16 autocast" if cuda else "fp32"
        print(
            f"{args.steps} steps on {device} ({amp}, {world} rank(s)): median {median:.2f} ms"
        )
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
