"""Where a run executes: the process group (DDP), the device and mixed precision.

DDP is started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
environment): gloo on CPU, NCCL on CUDA. Rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from pipelines.core.errors import UserError


class DeviceError(UserError, ValueError):
    """A device that cannot be used; the message is one line."""


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def start(self, device: torch.device) -> None:
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world)
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")

    def stop(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=op)
        return t.tolist()

    def all_min(self, values: list[float]) -> list[float]:
        return self._reduce(values, torch.distributed.ReduceOp.MIN if self.distributed else None)

    def all_sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, torch.distributed.ReduceOp.SUM if self.distributed else None)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows [n_r, ...] (n_r may differ) on every rank."""
        if not self.distributed:
            return t
        local = t.to(self.comm_device)
        count = torch.tensor([local.shape[0]], dtype=torch.int64, device=self.comm_device)
        sizes = [torch.zeros_like(count) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, count)
        longest = int(max(s.item() for s in sizes))
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(t.device)

    def gather_stack(self, local: torch.Tensor) -> torch.Tensor:
        """[world, ...]: every rank's same-shaped tensor, on the CPU."""
        local = local.to(self.comm_device)
        if not self.distributed:
            return local[None].cpu()
        parts = [torch.zeros_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local)
        return torch.stack(parts).cpu()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """auto (CUDA when there is one), cpu, cuda or cuda:N; a bad name is a DeviceError."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DeviceError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def amp_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if device.type != "cuda" or precision == "fp32":
        return None, False
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return dtype, dtype == torch.float16


@dataclass
class Runtime:
    """The device, the process group and autocast of one process of a run."""

    dist: DistEnv
    device: torch.device
    autocast_dtype: torch.dtype | None
    needs_scaler: bool

    @classmethod
    def start(cls, device: str, precision: str) -> Runtime:
        dist = DistEnv.from_env()
        torch_device = resolve_device(device, dist.local_rank)
        dist.start(torch_device)
        dtype, scaler = amp_settings(precision, torch_device)
        return cls(dist, torch_device, dtype, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DDP around `model` when there are several ranks."""
        if not self.dist.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
