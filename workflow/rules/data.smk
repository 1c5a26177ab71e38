rule download_mnist:
    output:
        raw=expand(MNIST_RAW, name=MNIST_FILES),
    log:
        "results/logs/download_mnist.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        sources=config["mnist_sources"],
        dest=lambda wildcards, output: Path(output.raw[0]).parent,
    shell:
        "ssvae-fetch-mnist --dest {params.dest:q} {params.sources:q} > {log} 2>&1"


rule prepare_mnist:
    input:
        raw=expand(MNIST_RAW, name=MNIST_FILES),
    output:
        arrays=MNIST_ARRAYS,
    log:
        "results/logs/prepare_mnist.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        raw_dir=lambda wildcards, input: Path(input.raw[0]).parent,
    shell:
        "ssvae-prepare-mnist --raw-dir {params.raw_dir:q} --out {output.arrays:q} > {log} 2>&1"
