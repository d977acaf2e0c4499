# Pre-training (paper 5.2, 5.4): the main run and the ablation runs of Tables 5-8. `--ablation
# NAME` trains the paper's main setting with one knob changed (rap.config.ablation_overrides),
# whatever the top-level knobs of params.yaml say.

PRETRAIN_GPUS = CFG.pretrain.gpus


rule pretrain:
    input:
        [index(s) for s in CFG.pretrain.sources],
    output:
        checkpoint=layout.checkpoint_path("pretrain", layout.MAIN_RUN, RUNS),
        summary=layout.summary_path("pretrain", layout.MAIN_RUN, RUNS),
    params:
        out=layout.run_dir("pretrain", layout.MAIN_RUN, RUNS),
        launch=launcher(PRETRAIN_GPUS),
    log:
        "logs/pretrain/main.log",
    threads: cpu_threads(PRETRAIN_GPUS)
    resources:
        gpu=PRETRAIN_GPUS,
    shell:
        "{params.launch} pretrain --out {params.out} > {log} 2>&1"


rule pretrain_ablation:
    input:
        [index(s) for s in CFG.pretrain.sources],
    output:
        checkpoint=f"{RUNS}/ablation/{{name}}/checkpoint.pt",
        summary=f"{RUNS}/ablation/{{name}}/train_summary.json",
    params:
        out=f"{RUNS}/ablation/{{name}}",
        launch=launcher(PRETRAIN_GPUS),
    log:
        "logs/pretrain/{name}.log",
    threads: cpu_threads(PRETRAIN_GPUS)
    resources:
        gpu=PRETRAIN_GPUS,
    shell:
        "{params.launch} pretrain --ablation {wildcards.name} --out {params.out} > {log} 2>&1"
