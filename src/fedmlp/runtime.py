"""Where and in what precision training runs: device, bf16 autocast, thread count."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from fedmlp.errors import FedmlpError

log = logging.getLogger(__name__)


@cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where bf16 autocast speeds convolutions up."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "bf16" or "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def use_deterministic_algorithms() -> None:
    """Ask CUDA for deterministic kernels (cuBLAS workspace, no cuDNN autotuning). On the CPU our
    runs are deterministic anyway; on a GPU this costs some speed."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on an op without one


def resolve(device: str = "auto", precision: str = "auto", threads: int | None = None, deterministic: bool = False) -> Runtime:
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        use_deterministic_algorithms()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FedmlpError("config key 'train.device': 'cuda' requested but no CUDA device is available")
    if device == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True  # cuDNN times its algorithms per shape once and keeps the fastest
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()
        precision = "bf16" if native else "fp32"
    runtime = Runtime(torch.device(device), precision)
    log.info("device %s, precision %s, %d CPU threads", runtime.device, runtime.precision, torch.get_num_threads())
    return runtime
