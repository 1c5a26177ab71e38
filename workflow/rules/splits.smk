rule labeled_split:
    input:
        # Checksum-verified data: a re-download (say, from another mirror) changes nothing downstream.
        arrays=ancient(MNIST_ARRAYS),
    output:
        split=SPLIT_FILE,
    log:
        "results/logs/labeled_split{labels}/seed{seed}.log",
    wildcard_constraints:
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        # Recorded: a split written in an earlier format (without its digest) is rebuilt.
        file_format=SPLIT_FORMAT,
        labels_per_class=labels_per_class,
    shell:
        "ssvae-split --data {input.arrays:q} --seed {wildcards.seed} "
        "--labels-per-class {params.labels_per_class} --out {output.split:q} > {log} 2>&1"
