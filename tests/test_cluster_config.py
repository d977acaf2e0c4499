"""The workflow's cluster config (rap/cluster.py): partitions, account and time limits per rule
from one file the user passes; defaults and every rejection (tests/test_slurm.py submits real
jobs with it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rap.cluster import DEFAULT_RUNTIME, RULE_KINDS, load_cluster, rule_resources
from rap.config import ConfigError


def test_defaults_need_no_file():
    cluster = load_cluster(None)
    assert rule_resources(cluster, "download") == {"slurm_partition": "cpu", "runtime": 1440, "mem_mb": 16000}
    pretrain = rule_resources(cluster, "pretrain")
    assert pretrain["slurm_partition"] == "gpu" and "slurm_account" not in pretrain
    assert set(RULE_KINDS) == set(DEFAULT_RUNTIME)  # every rule has a time limit


@pytest.mark.parametrize("form", ["mapping", "file", "configfile"])
def test_a_users_file_sets_partitions_account_and_limits(tmp_path: Path, form: str):
    settings = {"account": "proj7", "partitions": {"gpu": "a100"}, "runtime": {"pretrain": 2880}}
    path = tmp_path / "cluster.yaml"
    path.write_text(repr({"cluster": settings} if form == "configfile" else settings).replace("'", '"'))
    cluster = load_cluster(settings if form == "mapping" else str(path))
    assert rule_resources(cluster, "pretrain") == {
        "slurm_partition": "a100",
        "runtime": 2880,
        "mem_mb": 256000,
        "slurm_account": "proj7",
    }
    assert rule_resources(cluster, "extract")["slurm_partition"] == "cpu"  # the default kept
    assert rule_resources(cluster, "finetune")["runtime"] == DEFAULT_RUNTIME["finetune"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"acount": "x"}, "acount"),
        ({"partitions": {"tpu": "x"}}, "partitions.tpu"),
        ({"partitions": {"gpu": ""}}, "partitions.gpu"),
        ({"runtime": {"pretrian": 10}}, "runtime.pretrian"),
        ({"runtime": {"pretrain": 0}}, "runtime.pretrain"),
        ({"mem_mb": {"extract": "lots"}}, "mem_mb.extract"),
        ({"account": 7}, "account"),
        (["gpu"], "must be a mapping"),
    ],
)
def test_bad_cluster_settings_are_rejected(settings, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_cluster(settings)


def test_a_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_cluster(str(tmp_path / "nope.yaml"))
