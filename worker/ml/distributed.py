"""One run split across processes, one per device, started by torchrun: what the ranks agree on.

The process group is torch's (`init_process_group` with the environment torchrun sets), the
data and gradient split the Trainer's (DDP, or FSDP through accelerate); this module only adds
what tunelab's own callbacks need: which rank speaks to the outside world (rank 0), one stop
decision for every rank at a step, the tokens of all ranks counted once, and a barrier around
the renaming of a checkpoint that every rank writes to.

Every function is a no-op (or the local answer) in a process that is not part of a group, so the
single-device run goes through the same code unchanged.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# A collective that waits this long means a rank is stuck: the group fails (and the job goes back
# to the queue) instead of hanging for torch's default half hour.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def in_group() -> bool:
    """Whether this process is one rank of several."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if in_group() else 0


def world_size() -> int:
    return dist.get_world_size() if in_group() else 1


def is_main_process() -> bool:
    """Rank 0: the one that reports metrics, events and checkpoints, and writes the final folder."""
    return rank() == 0


def start_process_group() -> str:
    """Join the group torchrun's environment describes (gloo on CPU, NCCL on CUDA, each rank
    on its own GPU), before the Trainer's accelerate state, which then uses it. The backend."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return backend


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree_to_stop(wanted: bool) -> bool:
    """True on every rank when any rank wants to stop: one decision for the whole group at this
    step (rank 0's reporter reads the cancel flag; a rank that stopped alone would hang the others
    in their next collective)."""
    if not in_group():
        return wanted
    flag = torch.tensor([1 if wanted else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def total_across_ranks(count: int) -> int:
    """`count` summed over the ranks (every rank gets the total)."""
    if not in_group():
        return count
    total = torch.tensor([count], dtype=torch.int64, device=_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(total.item())


class _RankTokens:
    """The real tokens this process (this rank) has trained on: its own throughput's numerator."""

    seen = 0


def count_tokens(count: int) -> int:
    """A batch's `count` real tokens: added to this rank's own tally (`tokens_on_this_rank`) and
    summed over the ranks, the run's count (every rank gets the total)."""
    _RankTokens.seen += count
    return total_across_ranks(count)


def tokens_on_this_rank() -> int:
    return _RankTokens.seen


def gathered_from_ranks(values: list[float]) -> list[list[float]]:
    """Every rank's `values`, by rank (every rank gets them all): one small all_gather, which every
    rank must call at the same point, as any collective. `[values]` outside a group."""
    if not in_group():
        return [values]
    mine = torch.tensor(values, dtype=torch.float64, device=_device())
    every = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(every, mine)
    return [tensor.tolist() for tensor in every]


def summed_across_ranks(counts: torch.Tensor) -> torch.Tensor:
    """A tensor of counts summed over the ranks (every rank gets the sum): an evaluation's counts,
    each rank having evaluated its share of the rows."""
    if not in_group():
        return counts
    total = counts.to(_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def shard_on_cpu_too(trainer) -> None:
    """Give a CPU run asked to shard (`fsdp` in its arguments) the FSDP it asked for.

    accelerate keeps its FSDP plugin for GPU-like devices only: on CPU processes (its MULTI_CPU
    state) it drops the plugin and wraps the model in DDP. torch's FSDP2 (`fully_shard`) runs on
    CPU over gloo all the same, so the plugin is put back into accelerate's state before the
    model is prepared: the sharding, the wrap policy and the whole-model checkpoints stay
    accelerate's and torch's. A no-op on GPUs, where accelerate keeps the plugin itself.

    The type is set in PartialState's shared state too, as accelerate does itself for FSDP on
    GPUs: every later `AcceleratorState()` copies PartialState's values over its own, and a
    checkpoint load that saw MULTI_CPU there took rank 0 alone into the FSDP2 broadcast of the
    weights (a resume hung until the collective timeout)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if trainer.args.fsdp_plugin_args is None or trainer.is_fsdp_enabled:
        return
    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    gather = trainer.accelerator.get_state_dict

    def whole_state_dict(model, unwrap: bool = True):
        # On CPU accelerate's full state dict comes back still sharded (DTensors): gather each
        # weight whole (every rank, in the same order) into a tensor of its own.
        from torch.distributed.tensor import DTensor

        return {
            name: value.full_tensor().clone() if isinstance(value, DTensor) else value
            for name, value in gather(model, unwrap).items()
        }

    trainer.accelerator.get_state_dict = whole_state_dict


def barrier() -> None:
    if in_group():
        dist.barrier()


def end_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
