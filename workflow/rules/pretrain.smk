# Pre-training (paper 5.2, 5.4): the main run and the ablation runs of Tables 5-8. `--ablation
# NAME` trains the paper's main setting with one knob changed (rap.config.ablation_overrides),
# whatever the top-level knobs of params.yaml say.
#
# The job's shape comes from pretrain.nodes / gpus_per_node / cpu_procs_per_node through
# rap.launch: `rap pretrain` starts torchrun itself (one per node), and on several nodes the
# job's own srun step starts one `rap pretrain` per node.

PRETRAIN = CFG.pretrain
PRETRAIN_CPUS = launch.node_cpus(PRETRAIN, CFG.data.num_workers)  # per node
PRETRAIN_STEP = launch.step_prefix(PRETRAIN, PRETRAIN_CPUS)


rule pretrain:
    input:
        [index(s) for s in CFG.pretrain.sources],
    output:
        checkpoint=layout.checkpoint_path("pretrain", layout.MAIN_RUN, RUNS),
        metrics=layout.train_metrics_path("pretrain", layout.MAIN_RUN, RUNS),
    log:
        "logs/pretrain/main.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(PRETRAIN, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(PRETRAIN),
        **cluster("pretrain"),
    params:
        out=layout.run_dir("pretrain", layout.MAIN_RUN, RUNS),
    shell:
        f"{PRETRAIN_STEP}rap pretrain --out {{params.out}} {RAP_PARAMS} > {{log}} 2>&1"


rule pretrain_ablation:
    input:
        [index(s) for s in CFG.pretrain.sources],
    output:
        checkpoint=f"{RUNS}/ablation/{{name}}/checkpoint.pt",
        metrics=f"{RUNS}/ablation/{{name}}/train_metrics.json",
    log:
        "logs/pretrain/{name}.log",
    conda:
        RAP_ENV
    threads: launch.node_cpus(PRETRAIN, CFG.data.num_workers)
    resources:
        **launch.slurm_resources(PRETRAIN),
        **cluster("pretrain_ablation"),
    params:
        out=f"{RUNS}/ablation/{{name}}",
    shell:
        f"{PRETRAIN_STEP}rap pretrain --ablation {{wildcards.name}} --out {{params.out}} {RAP_PARAMS} > {{log}} 2>&1"
