"""Where the workflow's SLURM jobs go: partitions, account and time limits per rule, from one
config the user passes, so that no file of the repository is edited to run on a cluster.

The Snakemake workflow reads it from its ``cluster`` config key, either a mapping (a
``--configfile`` holding ``cluster: {...}``) or the path of a YAML file holding that mapping
(``--config cluster=my-cluster.yaml``, or ``config: ["cluster=..."]`` in a profile of one's
own)::

    account: my-account            # sbatch --account (omit where the cluster needs none)
    partitions: {cpu: short, gpu: a100}
    runtime: {pretrain: 2880}      # minutes, per rule (training resumes in the next attempt)
    mem_mb: {extract: 64000}       # per node

Every key is optional; the defaults below are the workflow's. Each rule is a CPU rule
(download, extract) or a GPU rule (training, evaluation, the figure), which picks its partition.
Bad keys or values stop the workflow before any job, naming the source and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from rap.config import ConfigError

__all__ = ["ClusterConfig", "RULE_KINDS", "load_cluster", "rule_resources"]

# rule -> the partition kind it runs on (localrules such as `tables` run beside Snakemake)
RULE_KINDS = {
    "download": "cpu",
    "extract": "cpu",
    "pretrain": "gpu",
    "pretrain_ablation": "gpu",
    "pretrain_seed": "gpu",
    "finetune": "gpu",
    "evaluate_zeroshot": "gpu",
    "evaluate_finetuned": "gpu",
    "evaluate_ablation": "gpu",
    "evaluate_seed": "gpu",
    "figure": "gpu",
    # the authors' released files (release/dvc.yaml): a conversion, then evaluations
    "release_import": "cpu",
    "release_zeroshot": "gpu",
    "release_finetuned": "gpu",
}
PARTITION_KINDS = ("cpu", "gpu")
# Minutes per attempt: a longer pre-training continues in the next attempt from its newest step
# checkpoint (the profile's `retries`), so a cluster's maximum job time is always usable.
DEFAULT_RUNTIME = {
    "download": 1440,
    "extract": 1440,
    "pretrain": 4320,
    "pretrain_ablation": 4320,
    "pretrain_seed": 4320,
    "finetune": 1440,
    "evaluate_zeroshot": 120,
    "evaluate_finetuned": 120,
    "evaluate_ablation": 120,
    "evaluate_seed": 120,
    "figure": 30,
    "release_import": 30,
    "release_zeroshot": 120,
    "release_finetuned": 120,
}
DEFAULT_MEM_MB = {  # per node
    "download": 16000,
    "extract": 32000,
    "pretrain": 256000,
    "pretrain_ablation": 256000,
    "pretrain_seed": 256000,
    "finetune": 128000,
    "evaluate_zeroshot": 64000,
    "evaluate_finetuned": 64000,
    "evaluate_ablation": 64000,
    "evaluate_seed": 64000,
    "figure": 16000,
    "release_import": 32000,  # a 2 GB release file and its converted copy
    "release_zeroshot": 64000,
    "release_finetuned": 64000,
}


@dataclass(frozen=True)
class ClusterConfig:
    account: str | None = None
    partitions: Mapping[str, str] = field(default_factory=lambda: {"cpu": "cpu", "gpu": "gpu"})
    runtime: Mapping[str, int] = field(default_factory=dict)
    mem_mb: Mapping[str, int] = field(default_factory=dict)


def load_cluster(value: Any) -> ClusterConfig:
    """The cluster config from the workflow's ``cluster`` config value (None: the defaults)."""
    if value is None:
        return ClusterConfig()
    source = "workflow config `cluster`"
    if isinstance(value, (str, Path)):
        path = Path(value)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"cluster config {path}: no such file")
        value = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(value, Mapping) and set(value) == {"cluster"}:  # the --configfile form, too
            value = value["cluster"]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: must be a mapping (account, partitions, runtime, mem_mb), got {value!r}")
    known = {"account", "partitions", "runtime", "mem_mb"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    account = value.get("account")
    if account is not None and (not isinstance(account, str) or not account.strip()):
        raise ConfigError(f"{source}: account must be a non-empty string, got {account!r}")
    partitions = {**ClusterConfig().partitions, **_mapping(value, "partitions", source)}
    for kind, name in partitions.items():
        if kind not in PARTITION_KINDS:
            raise ConfigError(f"{source}: partitions.{kind}: expected the kinds {list(PARTITION_KINDS)}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: partitions.{kind} must be a partition name, got {name!r}")
    return ClusterConfig(
        account=account,
        partitions=partitions,
        runtime=_per_rule(value, "runtime", source),
        mem_mb=_per_rule(value, "mem_mb", source),
    )


def _mapping(value: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    got = value.get(key) or {}
    if not isinstance(got, Mapping):
        raise ConfigError(f"{source}: {key} must be a mapping, got {got!r}")
    return dict(got)


def _per_rule(value: Mapping[str, Any], key: str, source: str) -> dict[str, int]:
    out = {}
    for rule, amount in _mapping(value, key, source).items():
        if rule not in RULE_KINDS:
            raise ConfigError(f"{source}: {key}.{rule}: no such rule; expected one of {sorted(RULE_KINDS)}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise ConfigError(f"{source}: {key}.{rule} must be a positive whole number, got {amount!r}")
        out[rule] = amount
    return out


def rule_resources(cluster: ClusterConfig, rule: str) -> dict[str, int | str]:
    """The Snakemake resources of ``rule``'s SLURM job (snakemake-executor-plugin-slurm names:
    ``slurm_partition``, ``slurm_account``, ``runtime`` in minutes, ``mem_mb`` per node)."""
    if rule not in RULE_KINDS:
        raise KeyError(f"rule {rule!r} has no cluster resources; known: {sorted(RULE_KINDS)}")
    resources: dict[str, int | str] = {
        "slurm_partition": cluster.partitions[RULE_KINDS[rule]],
        "runtime": cluster.runtime.get(rule, DEFAULT_RUNTIME[rule]),
        "mem_mb": cluster.mem_mb.get(rule, DEFAULT_MEM_MB[rule]),
    }
    if cluster.account:
        resources["slurm_account"] = cluster.account
    return resources
