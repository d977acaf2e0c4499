"""Worker for tests/test_distributed.py; run as
``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py OUT_DIR``.

Every rank builds the same seeded global batch, takes its own slice and computes the losses
with ``gather=True``; the losses and gradients are then averaged over ranks (what DDP does to
parameter gradients) and compared with one process computing the same losses on the whole
batch. Each rank writes ``OUT_DIR/rank<r>.json`` with the largest (scaled) deviations it saw; the
pytest side asserts on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from rap import distributed as rd
from rap.losses import itc_loss, racl_loss, racl_loss_official

B, N, L, D = 3, 6, 5, 16
KEYS = ("video_emb", "patch_feats", "text_emb", "token_feats", "tau")


def global_batch(
    world: int, dtype: torch.dtype = torch.float32, n_patch: int = N, n_tok: int = L
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    total, N, L = world * B, n_patch, n_tok
    unit = lambda *s: F.normalize(torch.randn(*s, generator=gen, dtype=torch.float64), dim=-1).to(dtype)  # noqa: E731
    lengths = torch.randint(1, L + 1, (total,), generator=gen)
    token_mask = torch.arange(L)[None, :] < lengths[:, None]
    patch_mask = torch.rand(total, N, generator=gen) > 0.2
    patch_mask[:, 0] = True
    # Sample 0 (rank 0) and sample B + 1 (rank 1) show the same video: a cross-rank duplicate.
    video_ids = torch.arange(total)
    video_ids[B + 1] = 0
    return dict(
        video_emb=unit(total, D),
        patch_feats=unit(total, N, D),
        text_emb=unit(total, D),
        token_feats=unit(total, L, D),
        token_mask=token_mask,
        patch_mask=patch_mask,
        video_ids=video_ids,
        tau=torch.tensor(0.07, dtype=dtype),
    )


def run_loss(
    name: str, x: dict[str, torch.Tensor], use_ids: bool, gather: bool | rd.GatherCache, local_gather: str = "anchors"
) -> torch.Tensor:
    ids = x["video_ids"] if use_ids else None
    if name == "itc":
        out = itc_loss(x["video_emb"], x["text_emb"], x["tau"], video_ids=ids, gather=gather)
    else:
        fn = racl_loss if name == "racl" else racl_loss_official
        out = fn(
            x["video_emb"],
            x["patch_feats"],
            x["text_emb"],
            x["token_feats"],
            x["token_mask"],
            x["tau"],
            patch_mask=x["patch_mask"],
            video_ids=ids,
            gather=gather,
            local_gather=local_gather,
        )
    return torch.stack(out)  # (v2t, t2v)


def leaves(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.clone().requires_grad_(True) if k in KEYS else v) for k, v in batch.items()}


def local_slice(x: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    return {k: (v if k == "tau" else v[rank * B : (rank + 1) * B]) for k, v in x.items()}


def scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want|, relative once |want| exceeds 1 (d/dtau is O(1/tau^2) ~ 100)."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1.0))


def compare(
    name: str,
    use_ids: bool,
    rank: int,
    world: int,
    dtype: torch.dtype = torch.float32,
    local_gather: str = "anchors",
    cached: bool = False,
) -> dict[str, float]:
    batch = global_batch(world, dtype)
    # One process, whole batch.
    ref_in = leaves(batch)
    ref = run_loss(name, ref_in, use_ids, gather=False)
    ref.sum().backward()
    # This rank: the whole batch is a replicated "parameter"; the rank uses only its slice.
    dist_in = leaves(batch)
    gather = rd.GatherCache(check_shapes=False) if cached else True
    mine = run_loss(name, local_slice(dist_in, rank), use_ids, gather=gather, local_gather=local_gather)
    mine.sum().backward()
    loss_mean = rd.all_reduce_mean(mine)
    errors = {"loss": scaled_error(loss_mean, ref.detach())}
    for k in KEYS:  # (ITC does not touch patches/tokens: no gradient on either side)
        grad = lambda t: torch.zeros_like(t) if t.grad is None else t.grad  # noqa: E731
        g = rd.all_reduce_mean(grad(dist_in[k]))  # DDP: average of the ranks' gradients
        errors[f"grad_{k}"] = scaled_error(g, grad(ref_in[k]))
    # Control: without gathering, the per-rank mean is a different (local-batch) loss; if this
    # were close too, the comparison above could not detect a broken gather.
    with torch.no_grad():
        local_only = rd.all_reduce_mean(run_loss(name, local_slice(batch, rank), use_ids, gather=False))
    errors["control_no_gather"] = float((local_only - ref.detach()).abs().max())
    return errors


def check_gather_primitives(rank: int, world: int) -> dict[str, float]:
    x = (torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3) + 10 * rank).requires_grad_(True)
    gathered = rd.all_gather_with_grad(x)
    expected = torch.cat([torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * r for r in range(world)])
    # Rank r weighs the global tensor by (r + 1): x on rank k must get sum_r (r + 1) = world(world+1)/2.
    (gathered * (rank + 1)).sum().backward()
    mask = torch.tensor([[True, False], [False, True]])[rank % 2]
    masks = rd.all_gather_no_grad(mask)
    return {
        "gather_value": float((gathered.detach() - expected).abs().max()),
        "gather_grad": float((x.grad - world * (world + 1) / 2).abs().max()),
        "gather_bool": float(masks.dtype != torch.bool or masks.tolist() != [True, False, False, True][: 2 * world]),
        "rank_helpers": float(rd.get_rank() != rank or rd.get_world_size() != world or not rd.is_distributed()),
    }


def racl_traffic(rank: int, world: int, n_patch: int, n_tok: int, local_gather: str) -> dict[str, int]:
    """Collectives and bytes of one RaCL forward + backward (all eq. 7-8 inputs gathered by a
    cache, as the model does), for local features of the given sizes."""
    x = leaves(local_slice(global_batch(world, n_patch=n_patch, n_tok=n_tok), rank))
    with rd.count_collectives() as counter:
        out = racl_loss(
            x["video_emb"],
            x["patch_feats"],
            x["text_emb"],
            x["token_feats"],
            x["token_mask"],
            x["tau"],
            patch_mask=x["patch_mask"],
            video_ids=x["video_ids"],
            gather=rd.GatherCache(check_shapes=False),
            local_gather=local_gather,
        )
        torch.stack(out).sum().backward()
    return {"collectives": counter.collectives, "bytes": counter.total_bytes, "host_syncs": counter.host_syncs}


def check_step_terms(rank: int, world: int) -> dict[str, object]:
    """StepTerms: rank 1's second micro-batch has a NaN term; every rank must see it, the
    finite term averaged over micro-batches and ranks, with one host sync per step."""
    terms = [
        {"loss": torch.tensor(1.0 + rank), "itc": torch.tensor(2.0)},
        {"loss": torch.tensor(3.0 + rank), "itc": torch.tensor(float("nan") if rank == 1 else 4.0)},
    ]
    acc = rd.StepTerms()
    with rd.count_collectives() as adding:
        for t in terms:
            acc.add(t, 0.5)
    with rd.count_collectives() as reducing:
        means, bad = acc.reduce({"grad_norm": torch.tensor(5.0)})
    want_loss = sum(0.5 * (1.0 + r) + 0.5 * (3.0 + r) for r in range(world)) / world
    return {
        "bad": bad,
        "loss_error": abs(means["loss"] - want_loss),
        "grad_norm": means["grad_norm"],
        "add_syncs": adding.host_syncs + adding.collectives,
        "reduce_syncs": reducing.host_syncs,
        "reduce_collectives": reducing.collectives,
    }


def check_model_collectives() -> dict[str, object]:
    """Collectives of one RaPModel forward + backward with every term on (tiny encoders)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from rap.model import RaPModel

    from helpers.model import model_cfgs, random_batch  # the embedded-scale model of the unit tests

    model_cfg, loss_cfg = model_cfgs()
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).train()
    batch = random_batch(model, b=3)
    batch["video_index"] = torch.arange(3)
    out = {}
    for checked in (True, False):
        with rd.count_collectives() as c:
            model(batch, gather=True, check_gather_shapes=checked)["loss"].backward()
        out[f"checked_{checked}"] = {"counts": c.counts, "host_syncs": c.host_syncs}
    return out


def check_unequal_batches(rank: int) -> str:
    batch = global_batch(2)
    size = B if rank == 0 else B - 1
    try:
        itc_loss(batch["video_emb"][:size], batch["text_emb"][:size], 0.07, gather=True)
    except ValueError as err:
        return str(err)
    return ""


def main() -> None:
    out = Path(sys.argv[1])
    rank, world, _, _ = rd.init_distributed()
    report: dict[str, object] = {"rank": rank, "world": world}
    report.update(check_gather_primitives(rank, world))
    for name in ("itc", "racl", "racl_official"):
        for use_ids in (False, True):
            key = f"{name}{'_ids' if use_ids else ''}"
            report[key] = compare(name, use_ids, rank, world)
            # float64: the rearranged sums agree to rounding, so 1e-6 is a real bound.
            report[f"{key}_f64"] = compare(name, use_ids, rank, world, torch.float64, cached=True)
            if name != "itc":
                report[f"{key}_features"] = compare(name, use_ids, rank, world, local_gather="features")
    report["traffic"] = {
        f"{mode}_{size}": racl_traffic(rank, world, n, l, mode)
        for mode in ("anchors", "features")
        for size, (n, l) in {"small": (N, L), "big": (4 * N, 3 * L)}.items()
    }
    report["unequal_error"] = check_unequal_batches(rank)
    report["step_terms"] = check_step_terms(rank, world)
    report["model_collectives"] = check_model_collectives()
    rd.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    rd.cleanup()


if __name__ == "__main__":
    main()
