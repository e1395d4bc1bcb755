"""Devices, element types, TF32 and memory: what every workload asks of torch before it times."""

import math

import torch

from . import Skip

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name):
    """The torch device named `cpu` or `cuda:N`; a skip where torch cannot use it."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise Skip(
            f"torch.cuda.is_available() is false in this image (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda})"
        )
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise Skip(f"{name} requested but torch sees {torch.cuda.device_count()} GPU(s)")
    torch.cuda.set_device(dev)
    return dev


def sync(dev):
    """Waits for the device's queued work."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def torch_dtype(name, what):
    """The torch dtype of a suite's dtype name (tf32 is fp32 storage)."""
    if name not in DTYPES:
        raise Skip(f"{what} does not support dtype {name}")
    return DTYPES[name]


def element_size(dt):
    """Bytes per element of `dt` (torch before 2.1 has no dtype.itemsize)."""
    return dt.itemsize if hasattr(dt, "itemsize") else torch.tensor([], dtype=dt).element_size()


def set_tf32(on):
    """TF32 for matmuls and cuDNN convolutions, on or off."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def skip_tf32_on_cpu(dev, dtype):
    """A skip for tf32 on the CPU, which has no TF32 arithmetic."""
    if dev.type == "cpu" and dtype == "tf32":
        raise Skip("tf32 is a CUDA tensor-core mode; the CPU has no tf32 arithmetic")


def rotation_count(dev, bytes_per_set, rotate_hint):
    """Input sets to rotate through so that each call reads its inputs from memory, not cache."""
    if dev.type == "cpu":
        return max(1, int(rotate_hint or 1))
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or (50 << 20)
    want = math.ceil(2 * l2 / max(1, bytes_per_set))
    cap = max(1, (1 << 30) // max(1, bytes_per_set))
    return max(1, min(want, cap, 64))


def gpu_facts(dev):
    """The GPU's name and index, for the case's row."""
    if dev.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(dev)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return {"gpu_name": props.name, "gpu_index": index}


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
    """The peak memory since mem_reset: allocated on the GPU, resident set on the CPU."""
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


def _meminfo_available():
    """MemAvailable from /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mem_available_bytes(dev):
    """Free device memory, or on the CPU what the host and this cgroup's limit leave."""
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    avail = _meminfo_available()
    if avail is None:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            avail = min(avail, int(limit))
    except OSError:
        pass
    return avail


def first_line(e):
    """`Type: message`, first line only: how a torch error is shown in a row."""
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0] if text else type(e).__name__
