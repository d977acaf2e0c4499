# Data: fetch (or, at the embedded scale, generate) each dataset, then probe and index it and
# build the pre-extracted frame store (DESIGN.md "Data").


rule download:
    output:
        f"{DATA}/raw/{{dataset}}/.done",
    log:
        "logs/download/{dataset}.log",
    threads: 1
    shell:
        "rap download {wildcards.dataset} > {log} 2>&1"


rule extract:
    input:
        f"{DATA}/raw/{{dataset}}/.done",
    output:
        f"{DATA}/index/{{dataset}}.jsonl",
    log:
        "logs/extract/{dataset}.log",
    threads: max(1, CFG.data.num_workers)
    shell:
        "rap extract {wildcards.dataset} > {log} 2>&1"
