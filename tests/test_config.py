"""params.yaml is read and validated in one place; bad input stops before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rap.config import REFERENCE_KNOBS, ConfigError, ablation_overrides, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def raw_params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def test_both_scales_load():
    embedded = load_params(PARAMS)
    assert embedded.scale == "embedded" and embedded.cfg.data.source == "synthetic"
    paper = load_params(PARAMS, {"scale": "paper"})
    # the paper's recipe (section 5.4)
    assert paper.cfg.model.embed_dim == 256
    assert paper.cfg.model.vision.img_size == 256 and paper.cfg.model.vision.patch_size == 16
    assert paper.cfg.model.text.name == "bert-base-uncased"
    opt = paper.cfg.pretrain.optim
    assert (opt.lr, opt.warmup_lr, opt.warmup_steps, opt.weight_decay, opt.epochs, opt.batch_size) == (
        3e-4,
        1e-6,
        3000,
        0.05,
        30,
        30,
    )
    assert paper.cfg.finetune.optim.lr == 1e-5 and paper.cfg.finetune.epochs["msrvtt-9k"] == 10
    assert paper.cfg.data.frames_train == 4 and paper.cfg.data.frames_eval == 8


def test_top_level_knobs_reach_the_scale():
    p = load_params(PARAMS, {"lambda": 2.0, "frames": 2, "racl": "v2t", "mask_video": 0.75})
    assert p.cfg.pretrain.loss.racl_lambda == 2.0
    assert p.cfg.finetune.loss.racl_lambda == 2.0  # fine-tuning keeps the pre-trained objective
    assert p.cfg.data.frames_train == 2
    assert p.cfg.pretrain.loss.racl == "v2t"
    assert p.cfg.model.mask_video == 0.75
    assert p.knobs["lambda"] == 2.0
    flat = p.to_flat_dict()
    assert flat["lambda"] == 2.0 and flat["pretrain.optim.lr"] == p.cfg.pretrain.optim.lr


def test_dotted_override_inside_the_scale():
    p = load_params(PARAMS, {"pretrain.optim.epochs": 1, "model.vision.depth": 1})
    assert p.cfg.pretrain.optim.epochs == 1 and p.cfg.model.vision.depth == 1


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"lambda": "two"}, "'lambda'"),
        ({"lambda": -1.0}, "'lambda'"),
        ({"racl": "sideways"}, "'racl'"),
        ({"frames": 0}, "'frames'"),
        ({"mask_video": 1.0}, "'mask_video'"),
        ({"scale": "huge"}, "'scale'"),
        ({"seed": -3}, "'seed'"),
        ({"pretrain.optim.lrr": 1e-3}, "embedded.pretrain.optim.lrr"),
        ({"pretrain.optim.epochs": 1.5}, "embedded.pretrain.optim.epochs"),
        ({"pretrain.optim.grad_comm": "fp16"}, "embedded.pretrain.optim.grad_comm"),
        ({"data.sampling_train": "random"}, "embedded.data.sampling_train"),
        ({"datasets": ["webvid", "youtube"]}, "'youtube'"),
        ({"ablations": ["racl-none", "lambda-1.0"]}, "lambda-1.0"),
        ({"ablations": ["racl-v2t"]}, "racl-none"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, overrides)
    assert needle in str(err.value)


def test_unknown_top_level_key_is_rejected():
    raw = raw_params()
    raw["lamda"] = 2.0
    with pytest.raises(ConfigError, match="lamda"):
        params_from_dict(raw)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_ablation_runs_change_one_knob_of_the_reference():
    assert ablation_overrides("lambda-2.0") == {**REFERENCE_KNOBS, "lambda": 2.0}
    assert ablation_overrides("racl-none")["racl"] == "none"
    assert ablation_overrides("frames-8")["frames"] == 8
    assert ablation_overrides("mask-0.75")["mask_video"] == 0.75
    for bad in ("lambda-1.0", "colour-red", "frames-two", "racl", "racl-none+seed-x", "racl-none+frames-2"):
        with pytest.raises(ConfigError):
            ablation_overrides(bad)
    # Table 9's knobs, and seed repeats (the main setting alone: "seed-N")
    assert ablation_overrides("variant-official")["racl_variant"] == "official"
    assert ablation_overrides("weightgrad-false")["racl_weight_grad"] is False
    assert ablation_overrides("racl-none+seed-2") == {**REFERENCE_KNOBS, "racl": "none", "seed": 2}
    assert ablation_overrides("seed-1") == {**REFERENCE_KNOBS, "seed": 1}


def test_knobs_are_declared_once_and_land_where_declared():
    from rap.config import KNOBS, TOP_LEVEL_KNOBS

    p = load_params(PARAMS, {"racl_weight_grad": False, "racl_variant": "official", "mask_text": 0.25})
    assert set(p.knobs) == {k.name for k in KNOBS} and {k.name for k in KNOBS} <= set(TOP_LEVEL_KNOBS)
    loss = p.cfg.pretrain.loss
    assert (loss.racl_weight_grad, loss.racl_variant, p.cfg.model.mask_text) == (False, "official", 0.25)
    assert p.to_flat_dict()["racl_weight_grad"] is False
    with pytest.raises(ConfigError, match="racl_weight_grad"):
        load_params(PARAMS, {"racl_weight_grad": "no"})


def test_finetuning_takes_racl_settings_from_pretraining():
    p = load_params(PARAMS, {"racl_weight_grad": False, "pretrain.loss.racl_weight_floor": 0.01, "racl": "v2t"})
    ft = p.cfg.finetune.loss
    assert (ft.racl_weight_grad, ft.racl_weight_floor, ft.racl) == (False, 0.01, "v2t")
    assert ft.lm_weight == 0.0  # fine-tuning's own settings stay its own
    with pytest.raises(ConfigError, match="finetune.loss.racl_weight_grad.*pretrain.loss"):
        load_params(PARAMS, {"finetune.loss.racl_weight_grad": False})


def test_seed_runs_are_validated():
    with pytest.raises(ConfigError, match="seed_runs"):
        load_params(PARAMS, {"seed_runs": ["racl-none"]})  # no seed part
    with pytest.raises(ConfigError, match="twice"):
        load_params(PARAMS, {"seed_runs": ["seed-1", "seed-1"]})


def test_cli_rejects_bad_value_before_work(capsys):
    from rap.cli import main

    assert main(["pretrain", "--params", str(PARAMS), "--set", "lambda=-2"]) == 2
    assert "'lambda'" in capsys.readouterr().err


def test_under_dvc_the_data_root_must_be_the_repositorys_data_folder(tmp_path, monkeypatch, capsys):
    """dvc.yaml's paths are fixed under data/: a stage's data.root elsewhere is refused before any
    work; data/ itself, a folder below it, or data/ as a symlink to another filesystem are fine."""
    from rap.cli import _check_dvc_data_root

    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    repo.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_STAGE", "download@msrvtt")
    with pytest.raises(ConfigError, match=rf"data.root='{scratch}' is outside .*ln -s {scratch} data"):
        _check_dvc_data_root(str(scratch))
    _check_dvc_data_root("data")
    _check_dvc_data_root("data/controlled/look")  # the controlled experiment's corpora
    (repo / "data").symlink_to(scratch)
    _check_dvc_data_root("data")
    _check_dvc_data_root(str(scratch))  # the same folder, named through the link's target
    monkeypatch.delenv("DVC_STAGE")
    _check_dvc_data_root(str(tmp_path / "anywhere"))  # outside DVC (Snakemake, by hand): any root
