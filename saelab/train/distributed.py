"""Data parallelism with torch.distributed (launched by torchrun): gloo on CPU, NCCL on GPUs.

Every rank reads the same global batch and trains on its contiguous 1/world slice (the batch
size must divide evenly); gradients are averaged over ranks. Guaranteed: a step equals the
single-process step on the whole batch for every architecture, up to floating-point reduction
order, and every rank holds the same weights, θ and dead mask. That holds because
- every other loss term is a mean over tokens of per-token terms (reconstruction, L1/L0/tanh
  and pre-activation penalties, Gated's auxiliary loss), so averaging the ranks' gradients of their
  shard means gives the gradient of the global mean;
- BatchTopK selects the k·B largest entries of the global batch, and its threshold θ is the
  running average of the global batch's smallest selected activation, the same on every rank
  (saelab.kernels.codes.batch_topk_select: each rank's top k·B + 1 scores are all-gathered;
  entries tied at the cut are all left out, so the split into ranks cannot change the choice);
- JumpReLU's quadratic penalty λ(L0/T − 1)² is taken of the global batch's L0 (all-reduced),
  its gradient 2λ(L0/T − 1)/T times each rank's ∂L0, which the gradient average combines;
- AuxK's normaliser Σ‖e − mean(e)‖² is summed over the global batch, with mean(e) the global
  mean (saelab.kernels.codes.aux_k_denominator, two all-reduces);
- dead-latent firing is OR-ed across ranks and counted in global tokens;
- neuron resampling draws from the gathered global batch with the same seeded RNG on every rank.
Any initialised process group is taken to be this data parallelism: the BatchTopK and AuxK
training forwards then run collectives on it; with one process none runs. An entry within
rounding of a selection boundary (BatchTopK's cut, TopK's k-th value, a JumpReLU θ) may fall on
either side in the two settings, hence "up to reduction order". The logged metrics (loss terms,
L0, FVU) are rank 0's values on its own shard; rank 0 writes all files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device.

    Under torchrun a bare "cuda" becomes cuda:LOCAL_RANK, so each process drives its own GPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda and torch.device(device).index is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard_batch(x: Tensor) -> Tensor:
    """This rank's contiguous 1/world slice of the global batch."""
    rank, size = world()
    if size == 1:
        return x
    if x.shape[0] % size:
        raise ValueError(f"batch_size={x.shape[0]} must be divisible by the world size {size}")
    return x.chunk(size)[rank]


def gather_batch(x: Tensor) -> Tensor:
    """The global batch from every rank's shard, in rank order (the inverse of shard_batch)."""
    _, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average_gradients(params) -> None:
    """All-reduce every gradient to the mean over ranks (equal local batch sizes)."""
    _, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= size


def any_across_ranks(mask: Tensor) -> Tensor:
    """Element-wise OR of a bool tensor over ranks."""
    if world()[1] == 1:
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world()[1] > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks stop at the same step)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
