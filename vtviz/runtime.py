"""Where and how models run: device choice, mixed precision, inference, distributed setup.

The one place that decides the device (``"auto"``: CUDA when there is one, else the CPU),
the precision (bfloat16 autocast on CUDA and on CPUs with native bf16 units; softmaxes and
maps stay float32 inside the models) and the memory format (channels-last). Inference,
evaluation, export and training all go through :func:`inference` / :func:`autocast_for`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def device_label(device: str | torch.device = "auto") -> str:
    """``"GPU: <name>"`` or ``"CPU"`` for a device (``"auto"``: where models load)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(dev)}"
    return "CPU"


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix units (AMX or AVX512-BF16)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def autocast_for(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """Mixed precision for inference/training on ``device``.

    ``enabled=None`` picks it where it pays: CUDA (bfloat16 if supported, else float16)
    and CPUs with native bfloat16. Softmaxes and maps stay float32 inside the model.
    """
    if device.type == "cuda":
        on = True if enabled is None else enabled
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype, enabled=on)
    if device.type == "cpu":
        on = cpu_has_fast_bf16() if enabled is None else enabled
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)
    return contextlib.nullcontext()


def to_model_input(model: nn.Module, batch: Tensor) -> Tensor:
    """``[B, 3, H, W]`` moved to the model's device, channels-last where that is faster."""
    device = model_device(model)
    x = batch.to(device, non_blocking=True)
    if device.type in ("cpu", "cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def inference(model: nn.Module, amp: bool | None = None) -> Iterator[None]:
    """Inference mode, eval mode (restored afterwards) and mixed precision for ``model``."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_for(model_device(model), amp):
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def cpu_threads_beside(device: torch.device, busy: int) -> Iterator[None]:
    """Run the model on a CPU with ``busy`` of its cores left to other processes (e.g. the
    exporter's drawing workers): torch's threads wait on one another at every layer, so one
    thread preempted by a busy core stalls them all. Unless the others would take every core:
    then they wait on the model part of the time (the exporter's workers draw a batch while the
    model runs the next one), and the model keeps all its threads (2 cores, 2 workers: 25 vs 23
    images/s exported with 1 model thread). The thread count is restored afterwards; nothing
    changes on a GPU or when ``busy`` is 0."""
    cores = os.cpu_count() or 1
    if device.type != "cpu" or busy <= 0 or busy >= cores:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores - busy)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a (possibly one-process) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on rank 0 (the process that writes summaries)."""
        return self.rank == 0

    @property
    def barrier(self) -> Callable[[], Any] | None:
        """The process group's barrier in a multi-process run, else None (nothing to wait for)."""
        if self.world <= 1:
            return None
        import torch.distributed as dist

        return dist.barrier


def init_distributed(device: str | torch.device = "auto") -> tuple[Dist, torch.device]:
    """Join the ``torchrun`` process group when there is one (NCCL on CUDA, else gloo).

    Returns this process's place and its device: ``cuda:LOCAL_RANK`` on GPUs, else
    ``device`` resolved as usual.
    """
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(), dev
    import torch.distributed as dist

    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    return Dist(dist.get_rank(), dist.get_world_size(), local), dev


def close_distributed(d: Dist) -> None:
    """Leave the process group joined by :func:`init_distributed` (no-op for one process)."""
    if d.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
