"""Data-parallel training under torchrun: which rank this process is, and the few collectives
the trainer needs.

`from_environment` turns torchrun's environment into a `Distributed`; `models.trainer.fit`
takes it and does the rest (batch slices, gradient averaging, agreed stops, one checkpoint
writer). Every helper below is a no-op, or returns its input, for a single process, so the
trainer calls them unconditionally and a one-process run does exactly what it did before.

Gradients are averaged in an optimizer step pre-hook rather than by wrapping modules in
DistributedDataParallel: families call `optimizer.step()` themselves, some several times a
step, some with parameters that get no gradient on a given step, and a hook at the step is
the one point all of them share without changing family code.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}

# Set by from_environment when it, not the caller, started the process group; shutdown only
# tears down what this module built.
_created_process_group = False


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(device_type: str) -> Distributed:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; when WORLD_SIZE > 1 initialises the default
    process group (gloo for "cpu", nccl for "cuda") and, for cuda, sets the current device to
    cuda:LOCAL_RANK. Without torchrun: Distributed() and nothing initialised."""
    global _created_process_group
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if device_type not in BACKENDS:
        raise ValueError(f"distributed training runs on {sorted(BACKENDS)}, not {device_type!r}")
    distributed = Distributed(rank=int(os.environ["RANK"]), world_size=world_size,
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        # before the process group exists, so NCCL binds each rank to its own GPU
        torch.cuda.set_device(distributed.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=BACKENDS[device_type], rank=distributed.rank, world_size=world_size)
        _created_process_group = True
    return distributed


def device_for(distributed: Distributed, device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", distributed.local_rank)
    return torch.device(device_type)


def shutdown(distributed: Distributed) -> None:
    global _created_process_group
    if _created_process_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_process_group = False


# --- collectives the trainer uses (no-ops for one process) ---------------------------------


def check_ready(distributed: Distributed, batch_size: int) -> None:
    if distributed.world_size == 1:
        return
    if batch_size % distributed.world_size:
        raise ValueError(f"batch_size {batch_size} is the global batch and must divide by the world size "
                         f"{distributed.world_size}")
    if not dist.is_initialized() or dist.get_world_size() != distributed.world_size:
        raise RuntimeError(f"{distributed} needs an initialised process group of that size: use from_environment")


def local_slice(indices: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """This rank's share of the global batch: the ranks together cover it once, in order."""
    if distributed.world_size == 1:
        return indices
    return indices.chunk(distributed.world_size)[distributed.rank]


def _communication_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo is happy with CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, distributed: Distributed) -> bool:
    """True on every rank when it is true on any: a decision to leave the loop must be shared,
    or the ranks still in it wait forever in their next collective."""
    if distributed.world_size == 1:
        return flag
    vote = torch.tensor([int(flag)], device=_communication_device())
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def all_gather_objects(value: Any, distributed: Distributed) -> list:
    if distributed.world_size == 1:
        return [value]
    gathered = [None] * distributed.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(distributed: Distributed) -> None:
    if distributed.world_size > 1:
        dist.barrier()


def _in_buckets(tensors: Iterable[torch.Tensor], collective: Callable[[torch.Tensor], Any]) -> None:
    """Run `collective` on one flat tensor per (device, dtype) and copy the result back in place.

    One call per bucket instead of one per tensor: latency, not bandwidth, dominates small
    tensors. The flat copy also sidesteps the backends' refusal of non-contiguous (e.g.
    channels_last) tensors.
    """
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        buckets.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for group in buckets.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        collective(flat)
        for tensor, piece in zip(group, flat.split([tensor.numel() for tensor in group])):
            tensor.copy_(piece.view_as(tensor))


@torch.no_grad()
def broadcast_from_main(tensors: Iterable[torch.Tensor], distributed: Distributed) -> None:
    if distributed.world_size > 1:
        _in_buckets((tensor.detach() for tensor in tensors), lambda flat: dist.broadcast(flat, src=0))


def broadcast_modules(modules: Iterable[nn.Module], distributed: Distributed) -> None:
    """Every parameter and buffer (persistent or not) takes rank 0's value."""
    tensors = [tensor for module in modules for tensor in (*module.parameters(), *module.buffers())]
    broadcast_from_main(tensors, distributed)


def broadcast_float_buffers(modules: Iterable[nn.Module], distributed: Distributed) -> None:
    """Buffers each rank updates from its own slice (BatchNorm running statistics, running
    means) drift apart; parameters do not, since every rank applies the same averaged step."""
    buffers = [buffer for module in modules for buffer in module.buffers() if buffer.is_floating_point()]
    broadcast_from_main(buffers, distributed)


@torch.no_grad()
def average_gradients(parameters: Sequence[nn.Parameter], world_size: int) -> None:
    """Replace each `.grad` by its mean over the ranks.

    A parameter with no gradient on any rank keeps None, so the optimizer skips it as a single
    process would (Adam's moments and weight decay would move it on a zero gradient). One
    with a gradient on some ranks only counts zeros for the others: each rank's loss is a
    mean over its slice, so the mean of the ranks' gradients is the gradient of the global
    batch's mean loss, and the slices that did not touch the parameter contribute zero to it.
    """
    if not parameters:
        return
    has_gradient = torch.tensor([parameter.grad is not None for parameter in parameters], dtype=torch.int32,
                                device=_communication_device())
    dist.all_reduce(has_gradient)
    needed = [parameter for parameter, count in zip(parameters, has_gradient.tolist()) if count]
    for parameter in needed:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)

    def mean_over_ranks(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)  # a sum: gloo has no AVG
        flat.div_(world_size)

    _in_buckets((parameter.grad for parameter in needed), mean_over_ranks)


def average_gradients_before_steps(optimizers: Iterable[torch.optim.Optimizer],
                                   distributed: Distributed) -> list[RemovableHandle]:
    """Hook every optimizer so its `step()` first averages its gradients over the ranks;
    remove the returned handles when training ends. Families must call their optimizers'
    steps in the same order on every rank, which they do, as that order depends on the step
    number only."""
    if distributed.world_size == 1:
        return []

    def before_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        average_gradients(parameters, distributed.world_size)

    return [optimizer.register_step_pre_hook(before_step) for optimizer in optimizers]
