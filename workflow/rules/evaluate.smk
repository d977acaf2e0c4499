# Zero-shot evaluation, fine-tuning and fine-tuned evaluation (Tables 1-4), and the zero-shot
# MSRVTT evaluation of every ablation run (Tables 5-8).

FINETUNE = CFG.finetune
FINETUNE_CPUS = launch.node_cpus(FINETUNE, CFG.data.num_workers)  # per node
FINETUNE_STEP = launch.step_prefix(FINETUNE, FINETUNE_CPUS)
# Evaluation takes fine-tuning's process layout (`rap evaluate` shards the encoding and the ITM
# re-ranking across its ranks, rap.evaluation); Figure 3 runs in one process.
EVAL_GPUS = 1 if max(CFG.pretrain.gpus_per_node, CFG.finetune.gpus_per_node) > 0 else 0
MAIN_CKPT = layout.checkpoint_path("pretrain", layout.MAIN_RUN, RUNS)


rule evaluate_zeroshot:
    input:
        checkpoint=MAIN_CKPT,
        index=index("{dataset}"),
        truth=truth("{dataset}"),
    output:
        f"{RUNS}/eval/zeroshot/{{dataset}}.json",
    log:
        "logs/evaluate/zeroshot-{dataset}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("evaluate_zeroshot"),
    shell:
        f"{FINETUNE_STEP}rap evaluate {{wildcards.dataset}} --checkpoint {{input.checkpoint}} --out {{output}} {RAP_PARAMS} > {{log}} 2>&1"


rule finetune:
    input:
        checkpoint=MAIN_CKPT,
        index=lambda wc: index(layout.task_dataset(wc.task)),
    output:
        f"{RUNS}/finetune/{{task}}/checkpoint.pt",
    log:
        "logs/finetune/{task}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("finetune"),
    params:
        out=f"{RUNS}/finetune/{{task}}",
    shell:
        f"{FINETUNE_STEP}rap finetune {{wildcards.task}} --checkpoint {{input.checkpoint}} --out {{params.out}} "
        f"{RAP_PARAMS} > {{log}} 2>&1"


rule evaluate_finetuned:
    input:
        checkpoint=f"{RUNS}/finetune/{{task}}/checkpoint.pt",
        index=lambda wc: index(layout.task_dataset(wc.task)),
        truth=lambda wc: truth(layout.task_dataset(wc.task)),
    output:
        f"{RUNS}/eval/finetuned/{{task}}.json",
    log:
        "logs/evaluate/finetuned-{task}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("evaluate_finetuned"),
    params:
        dataset=lambda wc: layout.task_dataset(wc.task),
    shell:
        f"{FINETUNE_STEP}rap evaluate {{params.dataset}} --checkpoint {{input.checkpoint}} --out {{output}} {RAP_PARAMS} > {{log}} 2>&1"


rule evaluate_ablation:
    input:
        checkpoint=f"{RUNS}/ablation/{{name}}/checkpoint.pt",
        index=index(layout.ABLATION_EVAL_DATASET),
        truth=truth(layout.ABLATION_EVAL_DATASET),
    output:
        f"{RUNS}/eval/ablation/{{name}}.json",
    log:
        "logs/evaluate/ablation-{name}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(FINETUNE, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(FINETUNE),
        **cluster("evaluate_ablation"),
    params:
        dataset=layout.ABLATION_EVAL_DATASET,
    shell:
        f"{FINETUNE_STEP}rap evaluate {{params.dataset}} --checkpoint {{input.checkpoint}} --out {{output}} {RAP_PARAMS} > {{log}} 2>&1"
