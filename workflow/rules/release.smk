# The authors' released checkpoints (release/dvc.yaml): `snakemake -s workflow/Snakefile release`.
# Not part of `all`: their inputs are files a user places by hand under <data.root>/release/
# (rap/release/__init__.py names them). Each is imported (`rap import-release`) and evaluated
# with both recipes (evaluate.recipe release and rap): the pre-trained file zero-shot on every
# downstream dataset, each fine-tuned file on its task. Tables 1-4 show the metrics at the next
# `rap tables`: the `tables` rule lists those that exist, so the next run of `all` reruns it.


rule release:
    input:
        RELEASE_METRICS,


rule release_import:
    input:
        lambda wc: str(layout.release_file(wc.release_run, DATA)),
    output:
        checkpoint=f"{RUNS}/release/{{release_run}}/checkpoint.pt",
        report=f"{RUNS}/release/{{release_run}}/import.json",
    log:
        "logs/release/import-{release_run}.log",
    conda:
        RAP_ENV
    threads: 1
    resources:
        **cluster("release_import"),
    params:
        out=f"{RUNS}/release/{{release_run}}",
    shell:
        f"rap import-release {{input}} --out {{params.out}} --set scale={PARAMS.scale} {RAP_PARAMS} > {{log}} 2>&1"


rule release_zeroshot:
    input:
        checkpoint=str(layout.release_checkpoint_path(PRETRAINED, RUNS)),
        index=index("{dataset}"),
        truth=truth("{dataset}"),
    output:
        f"{RUNS}/eval/release/{{recipe}}-recipe/zeroshot/{{dataset}}.json",
    log:
        "logs/release/zeroshot-{recipe}-{dataset}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("release_zeroshot"),
    shell:
        f"{FINETUNE_STEP}rap evaluate {{wildcards.dataset}} --checkpoint {{input.checkpoint}} --out {{output}} "
        f"--set evaluate.recipe={{wildcards.recipe}} {RAP_PARAMS} > {{log}} 2>&1"


rule release_finetuned:
    input:
        checkpoint=f"{RUNS}/release/{{task}}/checkpoint.pt",
        index=lambda wc: index(layout.task_dataset(wc.task)),
        truth=lambda wc: truth(layout.task_dataset(wc.task)),
    output:
        f"{RUNS}/eval/release/{{recipe}}-recipe/finetuned/{{task}}.json",
    log:
        "logs/release/finetuned-{recipe}-{task}.log",
    wildcard_constraints:
        task=_alternatives(RELEASED_TASKS),
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("release_finetuned"),
    params:
        dataset=lambda wc: layout.task_dataset(wc.task),
    shell:
        f"{FINETUNE_STEP}rap evaluate {{params.dataset}} --checkpoint {{input.checkpoint}} --out {{output}} "
        f"--set evaluate.recipe={{wildcards.recipe}} {RAP_PARAMS} > {{log}} 2>&1"
