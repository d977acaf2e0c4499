# Data: fetch (or, at the embedded scale, generate) each dataset, then probe and index it and
# build the pre-extracted frame store (DESIGN.md "Data").
#
# `rap download` fills data/raw/<dataset>/, a folder that may hold files placed by hand
# (LSMDC, DiDeMo). It is not a declared output, since Snakemake deletes a job's outputs
# before it reruns the job: the rule declares a marker next to it, written once the command
# succeeds, and a rerun deletes only that marker.


rule download:
    output:
        f"{DATA}/raw/{{dataset}}.downloaded",
    log:
        "logs/download/{dataset}.log",
    threads: 1
    resources:
        **cluster("download"),
    conda:
        RAP_ENV
    shell:
        f"rap download {{wildcards.dataset}} {RAP_PARAMS} > {{log}} 2>&1 && touch {{output}}"


rule extract:
    input:
        f"{DATA}/raw/{{dataset}}.downloaded",
    output:
        f"{DATA}/index/{{dataset}}.jsonl",
        f"{DATA}/index/{{dataset}}.truth.jsonl",
    log:
        "logs/extract/{dataset}.log",
    threads: max(1, CFG.data.num_workers)
    resources:
        **cluster("extract"),
    conda:
        RAP_ENV
    shell:
        f"rap extract {{wildcards.dataset}} {RAP_PARAMS} > {{log}} 2>&1"
