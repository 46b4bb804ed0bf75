"""Distributed training context for HybridNet (featmammo.nn): torchrun env -> process group.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup` joins the process group
(NCCL on CUDA, gloo on the CPU) and picks this rank's device; otherwise it returns a single-process
context and touches nothing. The device (``--device``) and the torchrun environment are read by
:mod:`featmammo.devices`, as everywhere else. Rank 0 writes files; the others wait at
:meth:`DistContext.barrier`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from featmammo.devices import resolve_device, torchrun_env

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # whether setup() created the process group (and teardown destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a short list of numbers over ranks (float64 on the CPU for gloo, else on the
        device)."""
        if not self.distributed:
            return list(values)
        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto") -> DistContext:
    """The process's rank/world size/device; joins the process group under torchrun."""
    env = torchrun_env()
    base = resolve_device(device)
    if not env.distributed:
        return DistContext(device=base)
    rank, world, local_rank = env.rank, env.world_size, env.local_rank
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        owns = True
    log.info("distributed: rank %d/%d on %s (%s)", rank, world, dev, backend)
    return DistContext(rank, world, local_rank, dev, owns)
