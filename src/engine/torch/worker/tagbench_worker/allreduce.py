"""All-reduce: every rank of the group runs the same calls (nccl-tests' method), one message
size at a time (`size` requests), each checked for wrong elements first."""

import torch

from . import Skip, ranks
from .device import sync, torch_dtype
from .timing import calls_for, time_iters

# The torch.distributed.ReduceOp member of each suite op.
OPS = {"sum": "SUM", "prod": "PRODUCT", "max": "MAX", "min": "MIN", "avg": "AVG"}


class Allreduce:
    """torch.distributed.all_reduce in place on one buffer per size."""

    def __init__(self, req, dev):
        p = req["params"]
        self.dev = dev
        self.warnings = []
        group = ranks.current()
        if group is None:
            raise RuntimeError("all-reduce runs only in a multi-rank launch")
        self.dist = group.dist
        self.dt = torch_dtype(p["dtype"], "allreduce")
        op = p["op"]
        if group.backend == "gloo" and op == "avg":
            raise Skip('gloo has no AVG reduction (NCCL does): use op = "sum" on the CPU')
        if not hasattr(self.dist.ReduceOp, OPS[op]):
            raise Skip(f"this torch ({torch.__version__}) has no ReduceOp.{OPS[op]}")
        if not p.get("in_place", False):
            self.warnings.append("torch.distributed.all_reduce works in place: in_place = false is measured in place")
        self.op_name = op
        self.op = getattr(self.dist.ReduceOp, OPS[op])
        self.rank, self.world = group.rank, group.world
        self.elem = torch.tensor([], dtype=self.dt).element_size()
        self.buf = None
        self.iters = 1
        self.facts = {
            "backend": group.backend,
            "world_size": self.world,
            "nccl_version": ranks.nccl_version() if group.backend == "nccl" else "",
        }

    def inputs(self, rank, n):
        """Rank `rank`'s input: small integers, whose every op's exact result is representable
        in fp16/bf16 too."""
        i = torch.arange(n, device=self.dev, dtype=torch.int64)
        return ((i % 3) + 1 + (rank % 2)).to(self.dt)

    def expected(self, n):
        """The exact result of the op over every rank's input, in float64."""
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
        self.iters = calls_for(self.timed(1))
        return {"wrong": int(wrong.item()), "iters": self.iters, "elements": nelem}

    def run(self):
        """One sample at the current size."""
        return {"seconds": self.timed(self.iters)}

    def finish(self):
        """Nothing measured over the samples."""
        return {}
