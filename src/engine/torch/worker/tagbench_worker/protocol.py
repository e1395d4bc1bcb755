"""The request/reply protocol between tagbench (Rust) and this worker.

One JSON request per line on stdin, one JSON reply per line on the real stdout:

    {"op": "hello"}                       -> {"ok": {versions}}  or {"skip": "torch not importable ..."}
    {"op": "components"}                  -> {"ok": {"maps": [...], "distributions": [...]}}
    {"op": "setup", "kind": ..., "device": ..., "params": {...}, "timing": {...}, ...}
                                          -> {"ok": {"facts": {...}, "warnings": [...]}}
                                             or {"skip": reason} / {"error": reason}
    {"op": "run"}                         -> {"ok": {"seconds": s, "values": {...}}}
    {"op": "size", "bytes": n}            -> {"ok": {"wrong": k, "iters": i, "elements": e}}   (allreduce)
    {"op": "finish"}                      -> {"ok": {facts measured over the samples}}

The Rust side owns the sampling loop and every statistic; the worker only times one sample per
"run", so pipe latency never enters a sample. Every reply starts with the token tagbench drew for
this process (TAGBENCH_REPLY_TOKEN) and a space, so that what a sitecustomize printed on stdout
before main() took it over is never read as a reply. Anything else written to stdout (a print in
a library, a C++ warning) is sent to stderr, which tagbench keeps in the case log.

`--rank DEVICE` runs one rank of a multi-rank case (ranks.py): rank 0 reads the requests and
broadcasts them, and every rank handles each in lockstep. `--distributions` prints one reply, the
Python distributions importable here, and exits without importing torch.
"""

import importlib
import json
import os
import sys
import traceback

from . import Skip, testhooks
from .components import components

# Each setup kind's workload: module and class (or factory) name, imported when first asked for.
WORKLOADS = {
    "gemm": ("gemm", "Gemm"),
    "attention": ("attention", "Attention"),
    "generate": ("generate", "create"),
    "precision": ("precision", "Precision"),
    "allreduce": ("allreduce", "Allreduce"),
    "conv": ("conv", "Conv"),
}

REPLY_TOKEN = os.environ.get("TAGBENCH_REPLY_TOKEN", "")

# Why torch cannot be imported here (None once it has been).
TORCH = {"error": "not tried"}


def import_torch():
    """Imports torch once; returns the reason it cannot be, or None."""
    if TORCH["error"] == "not tried":
        try:
            import torch  # noqa: F401 - imported for the workload modules, which need it

            TORCH["error"] = None
        except Exception as e:  # noqa: BLE001 - any import failure means the same: no torch here
            TORCH["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return TORCH["error"]


def no_torch():
    """The skip reply of an image without torch."""
    return {"skip": f"torch not importable in image: {TORCH['error']}"}


def workload(kind):
    """What builds the workload of a setup kind from (request, device), or None."""
    entry = WORKLOADS.get(kind)
    if entry is None:
        return None
    module = importlib.import_module(f"{__package__}.{entry[0]}")
    return getattr(module, entry[1])


def setup(req, state):
    """Sets a case up (or runs the probe, which has no samples)."""
    from . import device, probe, ranks, timing

    state.pop("bench", None)
    if req["kind"] == "probe":
        # The versions are worth reporting even where torch cannot use the GPU.
        try:
            return {"ok": probe.probe(device.resolve_device(req["device"]))}
        except Skip as e:
            import torch

            found = probe.probe(torch.device("cpu"))
            found["status"] += f"; no GPU: {e}"
            found["warnings"].append(str(e))
            return {"ok": found}
    dev = device.resolve_device(req["device"])
    timing.configure(req.get("timing"))
    group = ranks.current()
    if group is not None:
        testhooks.at_setup(group.rank)
    cls = workload(req["kind"])
    if cls is None:
        return {"error": f"the torch worker has no workload {req['kind']}"}
    bench = cls(req, dev)
    state["bench"] = bench
    facts = dict(getattr(bench, "facts", {}))
    facts.update(device.gpu_facts(dev))
    warnings = list(bench.warnings) + (group.warnings if group is not None else [])
    return {"ok": {"facts": facts, "warnings": warnings}}


def finish(bench):
    """Ends a case: what it measured over its samples, and its memory given back."""
    out = bench.finish()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"ok": out}


def handle(req, state):
    """The reply to one request."""
    op = req.get("op")
    if op == "components":
        return {"ok": components()}
    if import_torch() is not None:
        return no_torch()
    if op == "hello":
        from .probe import versions

        return {"ok": versions()}
    if op == "setup":
        return setup(req, state)
    bench = state.get("bench")
    if bench is None:
        return {"error": f"{op} without a set-up case"}
    if op == "run":
        return {"ok": bench.run()}
    if op == "size":
        return {"ok": bench.size(int(req["bytes"]))}
    if op == "finish":
        state.pop("bench", None)
        return finish(bench)
    return {"error": f"unknown request {op!r}"}


def error_reply(e):
    """The error reply of an exception: the first lines of torch's (often long) messages; the
    whole traceback is in the log."""
    return {"error": "\n".join(f"{type(e).__name__}: {e}".strip().splitlines()[:3])[:2000]}


def handle_safely(req, state):
    """handle(), with a skip or an exception turned into its reply."""
    try:
        return handle(req, state)
    except Skip as e:
        return {"skip": str(e)}
    except Exception as e:  # noqa: BLE001 - every failure goes back to tagbench as a case error
        traceback.print_exc(file=sys.stderr)
        return error_reply(e)


def send(proto, reply):
    """Writes one reply line behind the token and flushes it."""
    line = json.dumps(reply)
    proto.write((REPLY_TOKEN + " " + line if REPLY_TOKEN else line) + "\n")
    proto.flush()


def serve_rank(device_name, proto):
    """The loop of one rank of a multi-rank case."""
    from . import device, ranks

    group = ranks.start(device.resolve_device(device_name))
    state = {}
    while True:
        line = sys.stdin.readline() if group.rank == 0 else None
        line = group.broadcast_line(line)
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        # Each rank on its own device, whatever rank 0 was told.
        req["device"] = device_name
        reply = handle_safely(req, state)
        if group.rank == 0:
            send(proto, reply)
        elif "ok" not in reply:
            # The others are now inside a collective this rank will never join: say why and
            # leave, so that tagbench fails the case naming this rank instead of waiting.
            send(proto, reply)
            os._exit(3)
    group.stop()


def run_rank(device_name, proto):
    """One rank's process: its loop, or the reply saying why it could not start."""
    if import_torch() is not None:
        send(proto, no_torch())
        sys.exit(3)
    try:
        serve_rank(device_name, proto)
    except Exception as e:  # noqa: BLE001 - a rank that cannot start says why, then leaves
        traceback.print_exc(file=sys.stderr)
        reply = (
            {"skip": str(e)} if isinstance(e, Skip) else {"error": f"{type(e).__name__}: {e}".splitlines()[0][:2000]}
        )
        send(proto, reply)
        sys.exit(3)


def main():
    """The worker: a request/reply session, or with `--rank DEVICE` one rank of a group."""
    # The protocol owns the real stdout; everything else written to fd 1 goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if sys.argv[1:] == ["--distributions"]:
        # The native engine's question for a `command` case's programs: what the image's python
        # can import. Torch is not imported for it, and nothing counts as imported by this run.
        from .components import distributions

        send(proto, {"ok": {"distributions": distributions([], [])}})
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--rank":
        run_rank(sys.argv[2], proto)
        return
    state = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        send(proto, handle_safely(json.loads(line), state))
