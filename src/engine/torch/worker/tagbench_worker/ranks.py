"""The process group of a multi-rank case.

A multi-rank case runs as N copies of the worker started with `--rank DEVICE` and the
torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank 0
reads each request from stdin and broadcasts it, so every rank handles the same request in
lockstep (the collectives inside a workload then match); rank 0 answers. A non-zero rank that
cannot handle a request writes its reply to its own stdout and exits, which tagbench reads to
fail the case naming that rank (protocol.serve_rank).
"""

import datetime
import os

import torch

from . import Skip

# The group of this process when it is one rank of a multi-rank case (protocol.serve_rank).
GROUP = None


def current():
    """This process's group, or None in a one-process session."""
    return GROUP


def rank_and_world():
    """(rank, world size): (0, 1) outside a group."""
    return (GROUP.rank, GROUP.world) if GROUP is not None else (0, 1)


class Dist:
    """The data group (NCCL on GPUs, gloo on the CPU) and a gloo group for the control messages
    (requests, small CPU tensors)."""

    def __init__(self, dev):
        import torch.distributed as dist

        if not dist.is_available():
            raise Skip(f"this torch ({torch.__version__}) was built without torch.distributed")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and not dist.is_nccl_available():
            raise Skip(f"this torch ({torch.__version__}) was built without NCCL")
        if not dist.is_gloo_available():
            raise Skip(f"this torch ({torch.__version__}) was built without gloo")
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
            self._check_shm()

    def _check_shm(self):
        """NCCL's intra-node transport lives in /dev/shm; Docker's default 64 MiB is too small."""
        try:
            st = os.statvfs("/dev/shm")
        except OSError:
            return
        shm = st.f_frsize * st.f_blocks
        if shm < (1 << 30):
            self.warnings.append(
                f"/dev/shm is {shm >> 20} MiB: NCCL between {self.world} GPU processes may fail or slow down; "
                'give the target ipc = "host" or a shm_size of 1g or more'
            )

    def broadcast_line(self, line):
        """Rank 0's request line, on every rank."""
        obj = [line]
        self.dist.broadcast_object_list(obj, src=0, group=self.ctrl)
        return obj[0]

    def max_cpu(self, value):
        """The largest of each rank's float (peak memory per rank: the worst rank)."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.ctrl)
        return float(t.item())

    def mean_cpu(self, value):
        """The mean of each rank's float."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.ctrl)
        return float(t.item()) / self.world

    def stop(self):
        """Leaves the group."""
        self.dist.destroy_process_group()


def start(dev):
    """Joins this process's group (once per rank process)."""
    global GROUP
    GROUP = Dist(dev)
    return GROUP


def dist_max(value):
    """The largest of the ranks' values (None where no rank measured it); every rank must call."""
    if GROUP is None:
        return value
    m = GROUP.max_cpu(-1.0 if value is None else value)
    return None if m < 0 else m


def nccl_version():
    """NCCL's version as torch reports it, or empty."""
    try:
        v = torch.cuda.nccl.version()
        return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    except Exception:  # noqa: BLE001 - a torch without NCCL support raises various errors
        return ""
