rule train:
    input:
        arrays=ancient(MNIST_ARRAYS),
        split="results/splits/seed{seed}.json",
    output:
        metrics=RUN_FILE,
    log:
        "results/logs/train/{run}/seed{seed}.log",
    wildcard_constraints:
        run=run_id_pattern(),
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    threads: config["train_resources"]["threads"]
    resources:
        gpu=config["train_resources"]["gpus"],
        # How often to checkpoint is how the job runs, not what it computes: as a resource,
        # changing it retrains nothing (params would).
        checkpoint_every=config["train_resources"]["checkpoint_every"],
    params:
        run_config=train_config,
        device=config["train_resources"]["device"],
        compile=compile_choice(),
        tf32="--tf32" if config["train_resources"]["tf32"] else "",
        # Not an output: snakemake leaves it when the job fails, so a rerun resumes from it.
        checkpoint=CHECKPOINT_FILE,
    shell:
        "ssvae-train --data {input.arrays:q} --split {input.split:q} "
        "--run-config {params.run_config:q} --device {params.device} --threads {threads} "
        "--compile {params.compile} {params.tf32} "
        "--checkpoint {params.checkpoint:q} --checkpoint-every {resources.checkpoint_every} "
        "--out {output.metrics:q} > {log} 2>&1"
