# Training jobs. With train_resources.seeds_per_job 1, the rule train makes one job per (run, seed);
# with more, one rule per pack of configured seeds trains them together (one process, one GPU),
# and train is left for seeds outside the packs (a seed requested by its target alone). Every
# training rule has the same command, inputs of the same kind and the same recorded params, so
# that changing seeds_per_job reruns nothing (the workflow profiles leave out snakemake's
# input-set trigger, which would see the splits of a pack as a changed set of inputs).
TRAIN_COMMAND = (
    "ssvae-train --data {input.arrays:q} --split {input.splits:q} "
    "--run-config {params.run_config:q} --device {resources.device} --threads {threads} "
    "--compile {resources.compile} --tf32 {resources.tf32} "
    "--checkpoint {params.checkpoints:q} --checkpoint-every {resources.checkpoint_every} "
    "--store {params.store:q} --out {output.run_files:q} > {log} 2>&1"
)
# How a run is computed, not what it computes: as resources, changing them retrains nothing
# (params would). The run file records them.
TRAIN_RESOURCES = {
    "gpu": config["train_resources"]["gpus"],
    "device": config["train_resources"]["device"],
    "compile": on_off(config["train_resources"]["compile"]),
    "tf32": on_off(config["train_resources"]["tf32"]),
    "checkpoint_every": config["train_resources"]["checkpoint_every"],
}


rule train:
    input:
        # Checksum-verified data, and a split made from it by the seed alone: rebuilding
        # either changes nothing downstream.
        arrays=ancient(MNIST_ARRAYS),
        splits=ancient(SPLIT_FILE),
    output:
        run_files=RUN_FILE,
    log:
        f"{LABELS_ROOT}/logs/train/{{run}}/seed{{seed}}.log",
    wildcard_constraints:
        run=run_id_pattern(),
        seed=packed_seed_pattern(),
    conda:
        "../../envs/train.yaml"
    threads: config["train_resources"]["threads"]
    resources:
        **TRAIN_RESOURCES,
    params:
        run_config=run_config,
        # Not an output: snakemake leaves it when the job fails, so a rerun resumes from it.
        checkpoints=job_checkpoints,
        store=RESULT_STORE,
    shell:
        TRAIN_COMMAND


for pack in seed_packs():

    rule:
        name:
            f"train_seeds_{'_'.join(map(str, pack))}"
        input:
            arrays=ancient(MNIST_ARRAYS),
            splits=[ancient(SPLIT_FILE.replace("{seed}", str(seed))) for seed in pack],
        output:
            run_files=[RUN_FILE.replace("{seed}", str(seed)) for seed in pack],
        log:
            f"{LABELS_ROOT}/logs/train/{{run}}/seeds_{'_'.join(map(str, pack))}.log",
        wildcard_constraints:
            run=run_id_pattern(),
        conda:
            "../../envs/train.yaml"
        threads: config["train_resources"]["threads"]
        resources:
            **TRAIN_RESOURCES,
        params:
            run_config=run_config,
            checkpoints=job_checkpoints,
            store=RESULT_STORE,
        shell:
            TRAIN_COMMAND


# A run file of a run that the config does not define: its input function stops planning with
# one line; the rule never runs.
rule undefined_run:
    input:
        refuse_undefined_run,
    output:
        run_file=RUN_FILE,
    log:
        f"{LABELS_ROOT}/logs/train/{{run}}/seed{{seed}}.log",
    wildcard_constraints:
        run=undefined_run_pattern(),
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        "false"


# Anything under the directory of a label count that the config does not list: its input
# function stops planning with one line; the rule never runs.
rule unconfigured_label_count:
    input:
        refuse_unconfigured_count,
    output:
        f"{RESULTS}/{LABEL_COUNT_DIR}{{label_count}}/{{path}}",
    log:
        f"{RESULTS}/logs/unconfigured/{LABEL_COUNT_DIR}{{label_count}}/{{path}}.log",
    wildcard_constraints:
        label_count=unconfigured_count_pattern(),
        path=".+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    threads: 1
    shell:
        "false"
