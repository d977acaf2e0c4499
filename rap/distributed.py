"""Process-group set-up and the collectives the losses need.

Launch with ``torchrun`` (or ``python -m torch.distributed.run``): it sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them every
helper here degrades to the single-process behaviour (rank 0 of a world of 1, collectives are
identities), so the same training code runs on a laptop and on a cluster.

The contrastive losses (paper eqs. 2-3 and 7-8) compare each local anchor against the
candidates of the *global* batch, as the paper's 64-GPU pre-training does:
:func:`all_gather_with_grad` concatenates a tensor over ranks and routes the gradient of
every rank's loss back to the rank that owns each slice.

Traffic: :class:`GatherCache` gathers each tensor of one forward pass once (the same-video ids
and the global embeddings serve every loss), and ``check_shapes=False`` drops the shape
all-gather (a collective plus a host read) where the caller guarantees equal shapes (the
training loop pads text to a fixed length and drops ragged batches). :func:`check_equal_shapes`
validates many tensors in one collective, for a caller that checks once (first step) instead of
before every gather. :class:`CollectiveCounter` counts collectives, their bytes, and host reads
of tensor values (each a GPU sync) over a region, for the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

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
    "check_equal_shapes",
    "GatherCache",
    "CollectiveCounter",
    "count_collectives",
    "StepTerms",
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
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            **kwargs,
        )
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


_SHAPE_SLOTS = 9  # dim + up to 8 sizes per tensor


def _shape_rows(tensors: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """(T, 9) long: ``[dim, *shape]`` of each tensor, padded with -1 (tensors of different
    rank can still be gathered in one collective)."""
    rows = torch.full((len(tensors), _SHAPE_SLOTS), -1, dtype=torch.long)
    for row, x in zip(rows, tensors.values()):
        desc = [x.dim(), *x.shape][:_SHAPE_SLOTS]
        row[: len(desc)] = torch.tensor(desc, dtype=torch.long)
    return rows.to(device)


def check_equal_shapes(tensors: Mapping[str, torch.Tensor], what: str = "all_gather") -> None:
    """Raise on every rank if the ranks disagree on the shape of any of ``tensors`` (one
    all-gather and one host read for all of them). all_gather needs equal shapes, and the
    losses locate each rank's positives at offset ``rank * B``. No-op in one process."""
    if not is_distributed() or not tensors:
        return
    device = next(iter(tensors.values())).device
    rows = _shape_rows(tensors, device)
    gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    _count("all_gather", rows.numel() * rows.element_size() * dist.get_world_size())
    dist.all_gather(gathered, rows)
    per_rank = torch.stack(gathered).cpu().tolist()  # the host read (a sync on a GPU)
    for i, name in enumerate(tensors):
        shapes = [tuple(r[i][1 : 1 + r[i][0]]) for r in per_rank]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(
                f"{what} ({name}): every rank must pass the same shape (equal local batch size), "
                f"got {dict(enumerate(shapes))}"
            )


def _check_equal_shapes(x: torch.Tensor, what: str) -> None:
    check_equal_shapes({"tensor": x}, what)


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
        _count("all_gather", x.numel() * x.element_size() * dist.get_world_size())
        dist.all_gather(parts, x)
        ctx.rank = dist.get_rank()
        ctx.batch = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        _count("all_reduce", grad.numel() * grad.element_size())
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(x: torch.Tensor, *, check_shapes: bool = True) -> torch.Tensor:
    """``(B, ...)`` on each rank -> ``(world * B, ...)``, rank r's slice at ``[r*B:(r+1)*B]``,
    differentiable w.r.t. every rank's ``x``. Identity outside a multi-rank process group.
    All ranks must call it with the same shape: checked (ValueError otherwise) unless
    ``check_shapes=False``, which saves a collective and a host read when the caller knows."""
    if not is_distributed():
        return x
    if check_shapes:
        _check_equal_shapes(x, "all_gather_with_grad")
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor, *, check_shapes: bool = True) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` but detached (masks, ids, momentum features). Bool
    tensors are supported (sent as uint8, which every backend handles)."""
    if not is_distributed():
        return x.detach()
    if check_shapes:
        _check_equal_shapes(x, "all_gather_no_grad")
    send = x.detach().contiguous()
    is_bool = send.dtype == torch.bool
    if is_bool:
        send = send.to(torch.uint8)
    parts = [torch.empty_like(send) for _ in range(dist.get_world_size())]
    _count("all_gather", send.numel() * send.element_size() * dist.get_world_size())
    dist.all_gather(parts, send)
    out = torch.cat(parts, dim=0)
    return out.bool() if is_bool else out


class GatherCache:
    """The all-gathers of one forward pass, each done once.

    Several losses of eq. (10) need the same global tensors (ITC, RaCL and the intra-modal
    terms all use the global embeddings; every one of them the same-video ids): the first
    request gathers, later ones reuse the result (and its autograd node, so the backward
    all-reduce also happens once). Keys are the identity of the local tensor and the dtype it
    is gathered in; the cache holds a reference to each source, so an identity is never
    reused while cached. Create one per forward pass (never across micro-batches).
    """

    def __init__(self, *, check_shapes: bool = True) -> None:
        self.check_shapes = check_shapes
        self._memo: dict[tuple[int, torch.dtype | None, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def _get(self, x: torch.Tensor, dtype: torch.dtype | None, grad: bool) -> torch.Tensor:
        key = (id(x), dtype, grad)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        send = x if dtype is None else x.to(dtype)
        gather = all_gather_with_grad if grad else all_gather_no_grad
        out = gather(send, check_shapes=self.check_shapes)
        self._memo[key] = (x, out)
        return out

    def with_grad(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """:func:`all_gather_with_grad` of ``x`` (cast to ``dtype`` first), once per cache."""
        return self._get(x, dtype, True)

    def no_grad(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`all_gather_no_grad` of ``x``, once per cache."""
        return self._get(x, None, False)


# --------------------------------------------------------------------------------------
# Counting collectives and host reads (benchmarks)
# --------------------------------------------------------------------------------------


@dataclass
class CollectiveCounter:
    """What a region issued: collectives by kind (``counts``), the bytes each rank contributed
    and received through them (``bytes``; all-gather: the gathered output, all-reduce: the
    tensor), and host syncs (``host_syncs``: reads of tensor values and data-dependent output
    sizes, each a device-to-host sync on a GPU, see :class:`_SyncingOps`; on CUDA the driver's
    own sync reports are counted instead).
    Collectives made by DDP's C++ reducer (gradient buckets) are not seen."""

    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    host_syncs: int = 0

    @property
    def collectives(self) -> int:
        return sum(self.counts.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


_ACTIVE: list[CollectiveCounter] = []
_TORCH_COLLECTIVES = (
    "all_gather",
    "all_reduce",
    "all_gather_object",
    "broadcast",
    "reduce_scatter",
    "all_to_all",
    "barrier",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
)
_HOST_READS = ("tolist",)  # reads that bypass the dispatcher on a CPU tensor


def _count(kind: str, nbytes: int) -> None:
    for c in _ACTIVE:
        c.counts[kind] = c.counts.get(kind, 0) + 1
        c.bytes[kind] = c.bytes.get(kind, 0) + nbytes


def _count_host_read() -> None:
    for c in _ACTIVE:
        c.host_syncs += 1


def _tensor_bytes(name: str, args: tuple) -> int:
    """Bytes of the first tensor argument (of the output list for all_gather: the gathered size)."""
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.numel() * arg.element_size() * (dist.get_world_size() if name == "all_gather" else 1)
        if isinstance(arg, list) and arg and isinstance(arg[0], torch.Tensor):
            return sum(t.numel() * t.element_size() for t in arg)
    return 0


def _counting_collective(name: str, fn: Callable) -> Callable:
    """Count calls from outside this module (rap.distributed counts its own, exact bytes)."""

    def wrapper(*args, **kwargs):
        caller = sys._getframe(1)
        if caller.f_globals.get("__name__") != __name__:
            _count(name, _tensor_bytes(name, args))
        return fn(*args, **kwargs)

    return wrapper


class _SyncingOps(TorchDispatchMode):
    """Counts the operators that make a GPU wait for the host: reading a value (``.item()``,
    ``bool(t)``, ``int(t)``: ``_local_scalar_dense``), or an output whose size depends on the
    data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``)."""

    _ALWAYS = {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "equal",
        "is_nonzero",
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self._ALWAYS or (name == "index" and _has_bool_index(args)):
            _count_host_read()
        return func(*args, **(kwargs or {}))


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _counting_read(fn: Callable) -> Callable:
    def wrapper(self, *args, **kwargs):
        _count_host_read()
        return fn(self, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def count_collectives(device: torch.device | None = None) -> Iterator[CollectiveCounter]:
    """Count the collectives and host syncs of the enclosed region (see :class:`CollectiveCounter`).

    Collectives issued outside rap.distributed (``torch.distributed.*`` called by other code)
    are counted too, by wrapping the torch functions for the duration. Host reads: on a CUDA
    ``device`` the CUDA sync debug mode reports every synchronising call (counted through its
    warnings); elsewhere the tensor methods that read a value on the host are wrapped.
    Not thread-safe; for benchmarks and tests, not for production runs.
    """
    counter = CollectiveCounter()
    _ACTIVE.append(counter)
    saved_dist = {name: getattr(dist, name) for name in _TORCH_COLLECTIVES if hasattr(dist, name)}
    cuda = device is not None and device.type == "cuda"
    # torch.Tensor.__dict__ (not getattr): methods inherited from the C base are restored by
    # deleting the wrapper, leaving the class exactly as it was.
    saved_reads = {} if cuda else {name: torch.Tensor.__dict__.get(name) for name in _HOST_READS}
    try:
        for name, fn in saved_dist.items():
            setattr(dist, name, _counting_collective(name, fn))
        for name in saved_reads:
            setattr(torch.Tensor, name, _counting_read(getattr(torch.Tensor, name)))
        if cuda:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                previous = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode(1)
                try:
                    yield counter
                finally:
                    torch.cuda.set_sync_debug_mode(previous)
            counter.host_syncs += sum("synchroniz" in str(w.message) for w in caught)
        else:
            with _SyncingOps():
                yield counter
    finally:
        for name, fn in saved_dist.items():
            setattr(dist, name, fn)
        for name, fn in saved_reads.items():
            if fn is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)
        _ACTIVE.remove(counter)


# --------------------------------------------------------------------------------------
# One host sync per optimiser step: loss terms accumulated on the device
# --------------------------------------------------------------------------------------


class StepTerms:
    """The scalar loss terms of one optimiser step's micro-batches, kept on the device.

    :meth:`add` (per micro-batch) neither communicates nor reads a value on the host;
    :meth:`reduce` (once per step, before the optimiser steps) does one all-reduce and one host
    read for everything: the rank-mean of each term, extra per-step scalars (the gradient norm)
    and which terms were non-finite on any rank, so every rank can raise together. Non-finite
    values are counted as flags and left out of the sums (a NaN would hide the other terms).
    """

    def __init__(self) -> None:
        self._names: tuple[str, ...] | None = None
        self._values: torch.Tensor | None = None
        self._flags: torch.Tensor | None = None

    def add(self, terms: Mapping[str, torch.Tensor], weight: float = 1.0) -> None:
        """Accumulate ``weight * term`` (weight = 1 / micro-batches gives the step mean)."""
        names = tuple(terms)
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise ValueError(f"StepTerms: micro-batch terms {names} differ from the step's first {self._names}")
        values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
        bad = ~torch.isfinite(values)
        values = torch.where(bad, torch.zeros_like(values), values) * weight
        self._values = values if self._values is None else self._values + values
        self._flags = bad.float() if self._flags is None else self._flags + bad.float()

    def reduce(self, extra: Mapping[str, torch.Tensor] | None = None) -> tuple[dict[str, float], list[str]]:
        """``(means, bad)``: rank-means of the accumulated terms and of ``extra`` (scalars), and
        the names non-finite on at least one rank. One collective and one host read."""
        if self._values is None or self._flags is None or self._names is None:
            raise ValueError("StepTerms.reduce: no micro-batch was added")
        extra = dict(extra or {})
        names = self._names + tuple(extra)
        device = self._values.device
        extra_values = [e.detach().float().reshape(()).to(device) for e in extra.values()]
        values = torch.cat([self._values, torch.stack(extra_values)]) if extra_values else self._values
        extra_bad = ~torch.isfinite(values[len(self._names) :])
        flags = torch.cat([self._flags, extra_bad.float()])
        values = torch.where(flags > 0, torch.zeros_like(values), values)
        both = torch.cat([values, flags])
        if is_distributed():
            _count("all_reduce", both.numel() * both.element_size())
            dist.all_reduce(both, op=dist.ReduceOp.SUM)
            both[: len(names)] /= dist.get_world_size()
        host = both.cpu().tolist()  # the step's one host sync
        means = dict(zip(names, host[: len(names)]))
        bad = [name for name, f in zip(names, host[len(names) :]) if f > 0]
        for name in bad:
            means[name] = float("nan")
        return means, bad


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


def on_main(fn: Callable[[], Any], *, share: bool = True) -> Any:
    """Run ``fn`` on rank 0 alone (a decision that moves files, taking a lock) and make every
    rank return its result (``share``; otherwise the others get None) or raise its exception
    together: no rank is left waiting in a collective for one that failed."""
    result = error = None
    if get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # handed to every rank, raised below
            error = err
    if is_distributed():
        box = [result if share else None, error]
        dist.broadcast_object_list(box, src=0)
        if get_rank() != 0:
            result, error = box
    if error is not None:
        raise error
    return result
