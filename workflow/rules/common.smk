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


def extract_shard_file(dataset: str, shard) -> str:
    """What `rap extract DATASET --shard I/N` writes (N: data.extract_shards; rap/data/records.py)."""
    return str(shard_index_path(DATA, dataset, shard, CFG.data.extract_shards))


def extract_input(wildcards) -> list[str]:
    """The one extraction job reads the manifest; with data.extract_shards N > 1 the merge
    reads the N shard files (each job of rule extract_shard reads the manifest)."""
    n = CFG.data.extract_shards
    if n == 1:
        return [f"{DATA}/manifest/{wildcards.dataset}.jsonl"]
    return [extract_shard_file(wildcards.dataset, i) for i in range(n)]


def extract_merge_flag() -> str:
    """` --merge N` for the merge job of N > 1 shards; nothing for one (dvc.yaml's command)."""
    n = CFG.data.extract_shards
    return f" --merge {n}" if n > 1 else ""
