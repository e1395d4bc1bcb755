"""The one switch for tagbench's own tests: `TAGBENCH_TEST_HOOK`.

Unset in production; the worker then behaves as if this module did not exist. tests/torch.rs
and tests/slurm.rs set it to make one rank of a multi-rank case fail the way real ranks do:

    TAGBENCH_TEST_HOOK=crash-rank=N   rank N exits with status 7 at setup (a crashing rank)
    TAGBENCH_TEST_HOOK=hang-rank=N    rank N sleeps forever at setup (a rank stuck in a driver)
"""

import os
import sys
import time

VARIABLE = "TAGBENCH_TEST_HOOK"


def hook():
    """The (action, rank) the switch asks for, or None."""
    value = os.environ.get(VARIABLE, "")
    action, _, rank = value.partition("=")
    if action not in ("crash-rank", "hang-rank") or not rank.strip().isdigit():
        return None
    return action, int(rank)


def at_setup(rank):
    """Called by every rank of a multi-rank case when it sets a case up."""
    wanted = hook()
    if wanted is None or wanted[1] != rank:
        return
    action = wanted[0]
    sys.stderr.write(
        f"{VARIABLE}={action}={rank}: rank {rank} {'exits' if action == 'crash-rank' else 'hangs'} at setup\n"
    )
    sys.stderr.flush()
    if action == "crash-rank":
        os._exit(7)
    while True:
        time.sleep(3600)
