# Seed repeats of Tables 5 and 9 (seeds/dvc.yaml): `snakemake -s workflow/Snakefile seeds`.
# Not part of `all`: 20 more pre-trainings. Each run is a Table 5 / 9 setting with another seed
# (params.yaml `seed_runs`); the seed-0 runs are the default workflow's own.


rule seeds:
    input:
        SEED_TABLES,


rule pretrain_seed:
    input:
        [index(s) for s in CFG.pretrain.sources],
    output:
        checkpoint=f"{RUNS}/seeds/{{seed_run}}/checkpoint.pt",
        metrics=f"{RUNS}/seeds/{{seed_run}}/train_metrics.json",
    log:
        "logs/pretrain/seeds/{seed_run}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(PRETRAIN, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(PRETRAIN),
        **cluster("pretrain_seed"),
    params:
        out=f"{RUNS}/seeds/{{seed_run}}",
    shell:
        f"{PRETRAIN_STEP}rap pretrain --ablation {{wildcards.seed_run}} --out {{params.out}} {RAP_PARAMS} > {{log}} 2>&1"


rule evaluate_seed:
    input:
        checkpoint=f"{RUNS}/seeds/{{seed_run}}/checkpoint.pt",
        index=index(layout.ABLATION_EVAL_DATASET),
        truth=truth(layout.ABLATION_EVAL_DATASET),
    output:
        f"{RUNS}/eval/seeds/{{seed_run}}.json",
    log:
        "logs/evaluate/seeds/{seed_run}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("evaluate_seed"),
    params:
        dataset=layout.ABLATION_EVAL_DATASET,
    shell:
        f"{FINETUNE_STEP}rap evaluate {{params.dataset}} --checkpoint {{input.checkpoint}} --out {{output}} {RAP_PARAMS} > {{log}} 2>&1"


rule seed_tables:
    input:
        [str(p) for p in layout.seed_report_inputs(PARAMS, RUNS)],
    output:
        SEED_TABLES,
    log:
        "logs/reports/seed-tables.log",
    conda:
        RAP_ENV
    shell:
        f"rap tables --seeds --runs {RUNS} --out reports/seeds {RAP_PARAMS} > {{log}} 2>&1"
