# Helpers of the rules (kept apart from them: `snakemake --lint` asks for that).


def _alternatives(names):
    """Regex matching exactly one of ``names`` (wildcard constraints keep rules unambiguous)."""
    import re

    return "|".join(re.escape(n) for n in names) or "(?!)"


def eval_threads() -> int:
    """Cores of a one-process job (Figure 3): its data-loader workers (at least one)."""
    return max(1, CFG.data.num_workers)


def index(dataset: str) -> str:
    return f"{DATA}/index/{dataset}.jsonl"


def truth(dataset: str) -> str:
    """The ground truth of the indexed clips (rap extract; empty without one)."""
    return f"{DATA}/index/{dataset}.truth.jsonl"


def cluster(rule: str) -> dict:
    """The SLURM partition, account, runtime and memory of ``rule`` (the workflow's `cluster`
    config, rap/cluster.py); ignored by local runs."""
    return rule_resources(CLUSTER, rule)
