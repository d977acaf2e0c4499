# Data: fetch (or, at the embedded scale, generate) each dataset, then probe and index it and
# build the pre-extracted frame store (DESIGN.md "Data").
#
# `rap download` fills data/raw/<dataset>/, a folder that may hold files placed by hand
# (LSMDC, DiDeMo). It is not a declared output, since Snakemake deletes a job's outputs
# before it reruns the job: the rule declares a marker next to it, written once the command
# succeeds, and a rerun deletes only that marker. Its other output is the manifest of what
# arrived (rap/data/manifest.py), extraction's one input: a dead URL never fails the job, only a
# success rate below data.<dataset>.min_success does.


rule download:
    output:
        marker=f"{DATA}/raw/{{dataset}}.downloaded",
        manifest=f"{DATA}/manifest/{{dataset}}.jsonl",
    log:
        "logs/download/{dataset}.log",
    conda:
        RAP_ENV
    threads: 1
    resources:
        **cluster("download"),
    shell:
        f"rap download {{wildcards.dataset}} {RAP_PARAMS} > {{log}} 2>&1 && touch {{output.marker}}"


# data.extract_shards N > 1: N jobs `rap extract DATASET --shard I/N` (each over the CPUs it
# reserves: rap/data/extract.py), then the merge `rap extract DATASET --merge N` makes the index.
# N = 1: one job `rap extract DATASET` (its one shard and the merge), the command of dvc.yaml.


rule extract_shard:
    input:
        f"{DATA}/manifest/{{dataset}}.jsonl",
    output:
        extract_shard_file("{dataset}", "{shard}"),
    log:
        "logs/extract/{dataset}.{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        RAP_ENV
    threads: max(1, CFG.data.num_workers)
    resources:
        **cluster("extract"),
    shell:
        f"rap extract {{wildcards.dataset}} --shard {{wildcards.shard}}/{CFG.data.extract_shards} "
        f"{RAP_PARAMS} > {{log}} 2>&1"


rule extract:
    input:
        extract_input,
    output:
        f"{DATA}/index/{{dataset}}.jsonl",
        f"{DATA}/index/{{dataset}}.truth.jsonl",
    log:
        "logs/extract/{dataset}.log",
    conda:
        RAP_ENV
    threads: 1 if CFG.data.extract_shards > 1 else max(1, CFG.data.num_workers)
    resources:
        **cluster("extract"),
    shell:
        f"rap extract {{wildcards.dataset}}{extract_merge_flag()} {RAP_PARAMS} > {{log}} 2>&1"
