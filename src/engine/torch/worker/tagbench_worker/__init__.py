"""tagbench's torch worker: measures cases with the image's own PyTorch.

tagbench compiles this package in, writes it where the image's python3 can run it (or passes it
on the command line, `bootstrap.py`) and speaks to it with one JSON request and one JSON reply
per line (`protocol.py`). One module per workload family (`gemm`, `attention`, `generate` with
`llama`, `precision`, `allreduce`); the shared pieces are `device` (devices, dtypes, memory),
`timing` (one sample's time, with the constants the host sends), `ranks` (the process group of
a multi-rank case), `probe` and `components` (what the image has), and `testhooks` (the one
switch that makes a rank crash or hang, for tagbench's own tests).

Only torch and the standard library are used, and the code runs on the torch 2.x and Python 3.8+
versions found in images. The modules that need torch import it at their top; `protocol` imports
them only once torch has imported, so that an image without torch gets a `skip` that says why.
"""


class Skip(Exception):
    """The case cannot run here; the message says why."""
