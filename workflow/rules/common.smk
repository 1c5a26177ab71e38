import json
import re
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

# The four MNIST IDX files, as ssvae.data fetches them.
MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
MNIST_RAW = "results/data/mnist/raw/{name}.gz"
MNIST_ARRAYS = "results/data/mnist.npz"
RUN_FILE = "results/runs/{run}/seed{seed}/metrics.h5"
CHECKPOINT_FILE = "results/runs/{run}/seed{seed}/checkpoint.pt"
# The original's 10-seed numbers per run label (shared/spec/reference_results.md).
REFERENCE_RESULTS = "workflow/resources/reference_results.csv"
# Per-run figures of one seed, by file-name prefix, and the ssvae-plot figure that draws each.
SINGLE_SEED_FIGURES = {
    "samples": "samples",
    "KL_Z": "kl-z",
    "KL_Z_valid_mean": "kl-z-mean",
}
# Models without a decoder have no samples or z statistics to draw (the package's MLP).
MODELS_WITHOUT_DECODER = {"MLP"}
# Source files whose edits must re-render what they produce (and nothing upstream).
PACKAGE_DIR = Path(workflow.basedir) / "src" / "ssvae"


def validate_config(config, schema_path):
    """Stop before any job with one line naming the first invalid key and its value."""
    schema = yaml.safe_load(Path(workflow.basedir, schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise WorkflowError(
            f"invalid config: {key} = {error.instance!r}: {error.message}"
        )
    undefined = [run for run in config["compare"] if run not in config["runs"]]
    if undefined:
        raise WorkflowError(
            f"invalid config: compare names {undefined[0]!r}, not defined in runs"
        )


def run_ids():
    """The runs to train and compare, in config order (figure colours follow it)."""
    return config["compare"]


def run_id_pattern():
    """A wildcard constraint matching exactly the defined run ids."""
    return "|".join(re.escape(run) for run in config["runs"])


def run_files():
    """Every (run, seed) training output that the config names."""
    return expand(RUN_FILE, run=run_ids(), seed=config["seeds"])


def train_config(wildcards):
    """The resolved settings of one (run, seed) as JSON; a change to them retrains that run."""
    run = config["runs"][wildcards.run]
    settings = {
        "run": wildcards.run,
        "model": run["model"],
        "params": run.get("params", {}),
        "seed": int(wildcards.seed),
        "epochs": config["epochs"],
        "steps_per_epoch": config["steps_per_epoch"],
        "eval_every": config["eval_every"],
        **config.get("training", {}),
    }
    return json.dumps(settings, sort_keys=True)


def compile_choice():
    """ssvae-train's --compile value for the config's train_resources.compile."""
    choice = config["train_resources"]["compile"]
    return {True: "on", False: "off"}.get(choice, choice)


def runs_json():
    """Run ids with their labels, models, colour (by place among the defined runs, so that it
    does not change with the comparison) and seeds, in comparison order."""
    defined = list(config["runs"])
    runs = {
        run: {
            "label": config["runs"][run]["label"],
            "model": config["runs"][run]["model"],
            "palette_index": defined.index(run),
            "seeds": config["seeds"],
        }
        for run in run_ids()
    }
    return json.dumps(runs)


def figure_seed():
    """The seed of the single-seed figures: 2 as in the original, or the first seed if absent."""
    return 2 if 2 in config["seeds"] else config["seeds"][0]


def single_seed_figures():
    """Samples grid and the two KL heatmaps of every run that has a decoder."""
    vae_runs = [
        run
        for run in run_ids()
        if config["runs"][run]["model"] not in MODELS_WITHOUT_DECODER
    ]
    return expand(
        "results/plots/{figure}_{run}_seed{seed}.png",
        figure=SINGLE_SEED_FIGURES,
        run=vae_runs,
        seed=figure_seed(),
    )


def all_figures():
    """Every figure of the comparison, in the order the report shows them."""
    return [
        "results/plots/multi_seed_accuracy.png",
        *expand(
            "results/plots/multi_seed_accuracy_loss_{split}.png",
            split=["valid", "train"],
        ),
        "results/plots/active_dims.png",
        *single_seed_figures(),
    ]


def run_label(wildcards):
    return config["runs"][wildcards.run]["label"]
