#!/usr/bin/env bash
# Installs PyTorch and Hugging Face transformers from PyPI into a virtual environment for the
# torch engine's tests (tests/torch.rs; `impl = "hf"` generation needs transformers) and prints
# the environment's python on the last line of stdout.
#
# PyPI serves only the CUDA build of torch for Linux x86_64; it runs on CPU-only machines but
# needs the CUDA libraries it links against to import. This installs torch without its
# dependency resolution and then every dependency torch loads at import time, leaving out
# what only torch.compile and CUDA Python need (triton, cuda-bindings, nvtx): ~2.7 GB of
# wheels and 4.4 GB installed instead of ~3.0 GB and 5.3 GB. transformers (pinned, with its own
# dependencies: ~190 MB) comes after torch. Idempotent: an environment that already has the
# pinned torch and transformers is kept, so CI on a machine that ran it before only checks; one
# with the pinned torch but another or no transformers gets only transformers.
#
# Usage: scripts/install-torch-cpu.sh [VENV_DIR]
#   VENV_DIR defaults to $TAGBENCH_TORCH_VENV, else ~/.cache/tagbench/venv-torch.
set -euo pipefail

TORCH_VERSION=2.15.0
# The newest transformers when this was pinned; 5.25.0 needs torch >= 2.6 and Python >= 3.11 (the
# venv's and the test images' python). The tests use from_config, generate's streamer and
# cache_implementation = "static".
TRANSFORMERS_VERSION=5.25.0
venv="${1:-${TAGBENCH_TORCH_VENV:-$HOME/.cache/tagbench/venv-torch}}"
py="$venv/bin/python"

have_torch() {
    [ -x "$py" ] && "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null
}
have_transformers() {
    "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('transformers') != '$TRANSFORMERS_VERSION')" 2>/dev/null
}
# --no-warn-conflicts: pip would otherwise report the left-out packages as an error.
pip=("$py" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts)

if have_torch && have_transformers; then
    echo "torch $TORCH_VERSION and transformers $TRANSFORMERS_VERSION already importable in $venv" >&2
    echo "$py"
    exit 0
fi
if have_torch; then
    echo "installing transformers $TRANSFORMERS_VERSION into $venv (torch $TORCH_VERSION is there)" >&2
    "${pip[@]}" "transformers==$TRANSFORMERS_VERSION"
    "$py" -c "import transformers; transformers.LlamaForCausalLM"
    echo "$py"
    exit 0
fi

python3 -m venv "$venv"
"${pip[@]}" --no-deps "torch==$TORCH_VERSION"
# torch 2.15.0's Requires-Dist, less triton, cuda-bindings and nvtx (not loaded by `import torch`),
# plus numpy, which every PyTorch image has and without which torch warns at import.
"${pip[@]}" \
    filelock 'typing-extensions>=4.13.0' 'setuptools>=77.0.3' 'sympy>=1.13.3' 'networkx>=2.5.1' \
    jinja2 'fsspec>=0.8.5' numpy \
    'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusolver,cusparse,nvjitlink,nvrtc]==13.2.2' \
    'nvidia-cudnn-cu13==9.26.0.51' 'nvidia-cusparselt-cu13==0.8.1' \
    'nvidia-nccl-cu13==2.30.7' 'nvidia-nvshmem-cu13==3.7.2'
"${pip[@]}" "transformers==$TRANSFORMERS_VERSION"
"$py" -c "
import torch, torch.distributed as dist, transformers
x = torch.randn(64, 64)
assert torch.allclose(x @ torch.eye(64), x)
assert dist.is_gloo_available()
print('torch', torch.__version__, 'works on CPU; transformers', transformers.__version__, file=__import__('sys').stderr)
"
echo "$py"
