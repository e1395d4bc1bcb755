"""One sample's time: CUDA events (behind a torch.cuda._sleep on GPUs) or perf_counter.

The constants come from the host with every setup request (`timing`), where the native CUDA
engine's own live (src/engine/cuda/device.rs; docs/cuda.md, "Timing small work"):

    min_sample_s   a sample repeats a small operation until it lasts this long (timer resolution
                   and launch overhead must not dominate)
    max_calls      at most this many calls per sample
    min_lead_s, max_lead_s, max_retakes
                   the queued sample's lead (time_queued) and how often a sample whose calls were
                   not all queued in time is taken again
"""

import math
import time

import torch

from .device import sync

# The constants in force: the last setup request's.
CONFIG = {}
# The lead of the next queued sample and torch.cuda._sleep's cycles per second.
LEAD = {"s": None, "cycles_per_s": None}


def configure(timing):
    """Takes the host's timing constants (the setup request's `timing` object)."""
    if not timing:
        raise RuntimeError("the setup request has no `timing` constants (host and worker of different versions?)")
    CONFIG.update({k: float(timing[k]) for k in ("min_sample_s", "max_calls", "min_lead_s", "max_lead_s")})
    CONFIG["max_calls"] = int(CONFIG["max_calls"])
    CONFIG["max_retakes"] = int(timing["max_retakes"])
    if LEAD["s"] is None:
        LEAD["s"] = CONFIG["min_lead_s"]


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


def lead_for(host_s):
    """The lead for calls that take the host `host_s` to enqueue: twice that, within bounds."""
    return min(CONFIG["max_lead_s"], max(CONFIG["min_lead_s"], 2.0 * host_s))


def sleep_cycles_per_s():
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
    not all queued in time is taken again, `max_retakes` times at most, with a longer lead).
    Elsewhere, or without torch.cuda._sleep: time_iters."""
    if dev.type != "cuda" or not hasattr(torch.cuda, "_sleep"):
        return time_iters(dev, fn, iters)
    cps = sleep_cycles_per_s()
    for _ in range(1 + CONFIG["max_retakes"]):
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


def calls_for(once_s):
    """Calls per sample for a call of `once_s` seconds, so that a sample lasts min_sample_s."""
    if once_s <= 0:
        return CONFIG["max_calls"]
    return max(1, min(CONFIG["max_calls"], math.ceil(CONFIG["min_sample_s"] / once_s)))


def calibrate(dev, fn):
    """Calls per sample of `fn` (one call to warm up, one timed)."""
    fn()
    sync(dev)
    return calls_for(time_iters(dev, fn, 1))
