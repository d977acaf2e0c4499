"""Process-group set-up and the collectives the losses need.

Launch with ``torchrun`` (or ``python -m torch.distributed.run``): it sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them every
helper here degrades to the single-process behaviour (rank 0 of a world of 1, collectives are
identities), so the same training code runs on a laptop and on a cluster.

The contrastive losses (paper eqs. 2-3 and 7-8) compare each local anchor against the
candidates of the *global* batch, as the paper's 64-GPU pre-training does:
:func:`all_gather_with_grad` concatenates a tensor over ranks and routes the gradient of
every rank's loss back to the rank that owns each slice.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "barrier",
    "cleanup",
    "all_reduce_mean",
    "all_gather_with_grad",
    "all_gather_no_grad",
]

def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def init_distributed(timeout_s: float = 1800.0) -> tuple[int, int, int, torch.device]:
    """Join the process group described by torchrun's environment variables.

    Returns ``(rank, world_size, local_rank, device)``. The backend is NCCL when CUDA is
    available (one GPU per local rank) and gloo otherwise. Without ``WORLD_SIZE`` (or with
    ``WORLD_SIZE=1``) no process group is created: ``(0, 1, 0, cuda:0 | cpu)``. Calling it
    again after a successful initialisation returns the same values.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return 0, 1, 0, device
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {missing} not set: launch with torchrun")
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks, returned as a new detached tensor (for logging: losses,
    metrics). Identity (a detached copy) in a single process."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def _check_equal_shapes(x: torch.Tensor, what: str) -> None:
    """Raise on every rank if the ranks disagree on ``x.shape`` (all_gather needs equal
    shapes, and the losses locate each rank's positives at offset ``rank * B``)."""
    shape = torch.tensor([x.dim(), *x.shape], dtype=torch.long, device=x.device)
    # Pad to a fixed length so that tensors of different rank can still be gathered.
    fixed = torch.full((9,), -1, dtype=torch.long, device=x.device)
    fixed[: min(9, shape.numel())] = shape[:9]
    gathered = [torch.empty_like(fixed) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fixed)
    shapes = [tuple(int(v) for v in g[1: 1 + int(g[0])]) for g in gathered]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"{what}: every rank must pass the same shape (equal local batch size), "
                         f"got {dict(enumerate(shapes))}")


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate ``x`` from every rank along dim 0.

    Backward: rank r's loss L_r depends on every slice of the concatenation. The slice owned by
    rank k must receive sum_r dL_r/dX[k], so the incoming gradients are summed over ranks and
    each rank keeps its own slice. DDP then divides parameter gradients by the world size,
    which yields the gradient of mean_r L_r = the one-process loss on the global batch.
    (A sum all-reduce is used instead of reduce-scatter because gloo lacks the latter.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank = dist.get_rank()
        ctx.batch = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch: (ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` on each rank -> ``(world * B, ...)``, rank r's slice at ``[r*B:(r+1)*B]``,
    differentiable w.r.t. every rank's ``x``. Identity outside a multi-rank process group.
    All ranks must call it with the same shape (checked, ValueError otherwise)."""
    if not is_distributed():
        return x
    _check_equal_shapes(x, "all_gather_with_grad")
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` but detached (masks, ids, momentum features). Bool
    tensors are supported (sent as uint8, which every backend handles)."""
    if not is_distributed():
        return x.detach()
    _check_equal_shapes(x, "all_gather_no_grad")
    send = x.detach().contiguous()
    is_bool = send.dtype == torch.bool
    if is_bool:
        send = send.to(torch.uint8)
    parts = [torch.empty_like(send) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, send)
    out = torch.cat(parts, dim=0)
    return out.bool() if is_bool else out


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)`` (sizes differ by at most one; the
    blocks in rank order are ``range(n)``): how evaluation shards videos, texts and pairs."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world is None else world
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def gather_shards(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``x`` (``counts[r]`` rows on rank r, known to every rank, so no
    shape exchange is needed) in rank order; the identity in one process. Detached."""
    if not is_distributed():
        return x.detach()
    if x.shape[0] != counts[get_rank()]:
        raise ValueError(f"gather_shards: rank {get_rank()} holds {x.shape[0]} rows, expected {counts[get_rank()]}")
    rows = max(counts)
    send = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
    send[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(send) for _ in counts]
    dist.all_gather(parts, send)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def gather_objects(obj: object) -> list[object]:
    """Every rank's picklable ``obj`` in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
