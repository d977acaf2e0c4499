# Reports: Tables 1-9 from the metrics files (rap.reports.layout says which file feeds which
# row), Figure 3 from the RaCL model and the model trained without RaCL, and Table 8's speed
# column timed by `rap speed` (measured: an output Snakemake needs, no DVC out).


rule tables:
    input:
        [str(p) for p in layout.report_inputs(PARAMS, RUNS)],
        # the released checkpoints' metrics (target `release`) where they exist: Tables 1-4
        # show them, and a newer one reruns the tables; never required (rap.release)
        [p for p in RELEASE_METRICS if os.path.exists(p)],
    output:
        TABLES,
    log:
        "logs/reports/tables.log",
    conda:
        RAP_ENV
    shell:
        f"rap tables --runs {RUNS} --out reports {RAP_PARAMS} > {{log}} 2>&1"


rule figure:
    input:
        racl=MAIN_CKPT,
        baseline=layout.checkpoint_path("ablation", "racl-none", RUNS),
        index=index(layout.ABLATION_EVAL_DATASET),
        truth=truth(layout.ABLATION_EVAL_DATASET),
    output:
        FIGURE,
    log:
        "logs/reports/figure.log",
    conda:
        RAP_ENV
    threads: eval_threads()
    resources:
        **cluster("figure"),
        gpu=EVAL_GPUS,
    shell:
        f"rap figure --racl-checkpoint {{input.racl}} --baseline-checkpoint {{input.baseline}} --out {{output}} "
        f"{RAP_PARAMS} > {{log}} 2>&1"


rule speed:
    output:
        SPEED,
    log:
        "logs/reports/speed.log",
    conda:
        RAP_ENV
    threads: eval_threads()
    resources:
        gpu=EVAL_GPUS,
    shell:
        f"rap speed --out {{output}} {RAP_PARAMS} > {{log}} 2>&1"
