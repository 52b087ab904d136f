"""torch.distributed helpers (gloo on CPU, NCCL on GPUs)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["world", "rank", "is_main", "all_reduce_sum", "init_from_env", "default_device"]


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (``x`` itself on one rank), on ``x``'s device. NCCL reduces only CUDA tensors, so a host
    tensor (the trainers' voxel counts and loss terms) makes a round trip through this rank's GPU."""
    if world() == 1:
        return x
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
    y = x.to(comm, copy=True)
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(backend: str | None = None) -> None:
    """Initialise the process group from torchrun's environment (no-op without WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(default_device())
