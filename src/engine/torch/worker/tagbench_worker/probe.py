"""The probe: versions of python, torch, CUDA, cuDNN and NCCL, and the GPU torch sees."""

import sys

import torch

from .hf import version as hf_version
from .ranks import nccl_version


def versions():
    """The reply to `hello`: what the session's torch is."""
    return {
        "python_version": sys.version.split()[0],
        "torch_version": torch.__version__,
        "torch_cuda": str(torch.version.cuda or ""),
        "cuda_available": torch.cuda.is_available(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def _library_versions():
    """torch's build (CUDA, cuDNN, NCCL, arch list, TF32 defaults) and the transformers version."""
    info = {
        "python_version": sys.version.split()[0],
        "torch_version": torch.__version__,
        "torch_cuda": str(torch.version.cuda or ""),
        "torch_threads": str(torch.get_num_threads()),
        "torch_mkldnn": str(torch.backends.mkldnn.is_available()),
    }
    try:
        info["torch_cudnn"] = str(torch.backends.cudnn.version() or "")
    except Exception:  # noqa: BLE001 - no cuDNN in a CPU build
        info["torch_cudnn"] = ""
    info["torch_nccl"] = nccl_version() if torch.cuda.is_available() else ""
    info["torch_arch_list"] = " ".join(torch.cuda.get_arch_list()) if torch.version.cuda else ""
    info["torch_tf32_matmul_default"] = str(torch.backends.cuda.matmul.allow_tf32)
    info["torch_tf32_cudnn_default"] = str(torch.backends.cudnn.allow_tf32)
    info["transformers_version"] = hf_version()
    return info


def _gpu(dev, info, warnings):
    """The GPU's facts into `info`; a warning where torch's build lacks the GPU's arch. Returns
    the status line."""
    props = torch.cuda.get_device_properties(dev)
    cap = torch.cuda.get_device_capability(dev)
    arch = f"sm_{cap[0]}{cap[1]}"
    arches = torch.cuda.get_arch_list()
    # A GPU without its own cubin in the build runs PTX JIT-compiled for an older arch (slow
    # first calls, sometimes missing kernels) or not at all.
    supported = arch in arches
    ptx_ok = any(a.startswith("compute_") and int(a.split("_")[1]) <= cap[0] * 10 + cap[1] for a in arches)
    info.update(
        {
            "gpu_name": props.name,
            "gpu_count": str(torch.cuda.device_count()),
            "compute_capability": f"{cap[0]}.{cap[1]}",
            "sm_count": str(props.multi_processor_count),
            "gpu_memory_mib": str(props.total_memory // 2**20),
            "torch_gpu_arch_in_arch_list": str(supported),
        }
    )
    if not supported:
        consequence = "kernels are JIT-compiled from PTX" if ptx_ok else "this torch build cannot run on this GPU"
        warnings.append(f"{arch} is not in torch.cuda.get_arch_list() ({' '.join(arches)}): {consequence}")
    return (
        f"torch {torch.__version__}, CUDA {info['torch_cuda']}, cuDNN {info['torch_cudnn']}, "
        f"NCCL {info['torch_nccl']} on {props.name} ({arch}, {arch} in arch list: {'yes' if supported else 'no'})"
    )


def probe(dev):
    """The probe's reply: a status line, the versions (run.json metadata) and warnings."""
    info = _library_versions()
    warnings = []
    status = f"torch {torch.__version__} on CPU ({info['torch_threads']} threads)"
    if dev.type == "cuda":
        status = _gpu(dev, info, warnings)
    return {"status": status, "env": info, "warnings": warnings}
