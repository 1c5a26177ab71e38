import json
import math
import re
import shlex
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

from ssvae.checkpoint import finished_copy_path
from ssvae.config import ConfigError, run_settings
from ssvae.data import N_TRAIN
from ssvae.figures import BY_STEM, FIGURES, comparison_path, per_run_path
from ssvae.models import MODELS

MNIST_RAW_DIR = "results/data/mnist/raw"
MNIST_ARRAYS = "results/data/mnist.npz"
RUN_FILE = "results/runs/{run}/seed{seed}/metrics.h5"
CHECKPOINT_FILE = "results/runs/{run}/seed{seed}/checkpoint.pt"
# Snakemake's measurement of each training job: wall time and peak memory.
BENCHMARK_FILE = "results/benchmarks/train/{run}/seed{seed}.tsv"
# The original's 10-seed numbers per run label (docs/original.md, section 8).
REFERENCE_RESULTS = "workflow/resources/reference_results.csv"
# Source files whose edits must re-render what they produce (and nothing upstream).
PACKAGE_DIR = Path(workflow.basedir).parent / "src" / "ssvae"


def validate_config(config, schema_path):
    """Stop before any job with one line naming the first invalid key and its value: the
    schema, then what each compared run's settings would refuse at train time."""
    schema = yaml.safe_load(Path(workflow.basedir, schema_path).read_text())
    typed_from_command_line(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            extra = next(name for name in error.instance if name not in known)
            raise WorkflowError(
                f"invalid config: {'.'.join(filter(None, [key, extra]))}: not a known key"
                f" (known: {', '.join(known)})"
            )
        value = repr(error.instance) if len(repr(error.instance)) <= 200 else "..."
        # A pattern is explained by its schema's description rather than shown as a regex.
        if error.validator == "pattern" and "description" in error.schema:
            message = f"must be {error.schema['description']}"
        else:
            message = error.message[:200]
        raise WorkflowError(
            f"invalid config: {key or '(top level)'} = {value}: {message}"
        )
    for key, value in leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise WorkflowError(
                f"invalid config: {key} = {value!r}: must be a finite number"
            )
    if config["reference_run"] not in config["runs"]:
        raise WorkflowError(
            f"invalid config: reference_run = {config['reference_run']!r}: not a run defined "
            f"in runs (defined: {', '.join(config['runs'])})"
        )
    undefined = [run for run in config["compare"] if run not in config["runs"]]
    if undefined:
        raise WorkflowError(
            f"invalid config: compare names {undefined[0]!r}, not defined in runs"
        )
    for run in config["compare"]:
        try:
            settings = run_settings(config, run, config["seeds"][0])
        except ConfigError as err:
            key = str(err).split(":")[0]
            where = f"runs.{run}." if key.startswith("params.") else "training."
            raise WorkflowError(f"invalid config: {where}{err}") from None
    images = config["steps_per_epoch"] * settings.batch_size
    if images > N_TRAIN:
        raise WorkflowError(
            f"invalid config: training.batch_size = {settings.batch_size}: "
            f"{config['steps_per_epoch']} steps of it take {images:,} images an epoch, more "
            f"than the {N_TRAIN:,} training images"
        )


def leaves(value, key=""):
    """(dotted key, value) of every scalar in a nested config."""
    if isinstance(value, dict):
        for name, child in value.items():
            yield from leaves(child, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, f"{key}.{index}")
    else:
        yield key, value


def typed_from_command_line(value, schema, root=None):
    """snakemake --config reads a list or a mapping with YAML's base loader, so every scalar in
    it is a string ("seeds=[1,2]" gives ['1', '2']): give back the numbers and booleans the
    schema asks for there, in place."""
    root = root or schema
    schema = resolve_ref(schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        children = [
            (name, properties.get(name, schema.get("additionalProperties")))
            for name in value
        ]
    elif isinstance(value, list):
        children = [(index, schema.get("items")) for index in range(len(value))]
    else:
        return
    for place, child_schema in children:
        child_schema = resolve_ref(child_schema, root)
        if isinstance(value[place], str):
            value[place] = typed(value[place], child_schema)
        else:
            typed_from_command_line(value[place], child_schema, root)


def resolve_ref(schema, root):
    """A schema with a local $ref ("#/$defs/name") followed; {} where there is none."""
    if not isinstance(schema, dict):
        return {}
    if "$ref" in schema:
        return resolve_ref(root["$defs"][schema["$ref"].removeprefix("#/$defs/")], root)
    return schema


def typed(text, schema):
    """`text` as the number or boolean `schema` expects, or unchanged."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    kind = schema.get("type")
    if kind == "boolean" and isinstance(parsed, bool):
        return parsed
    if kind in ("integer", "number") and not isinstance(parsed, bool):
        if isinstance(parsed, int) or (kind == "number" and isinstance(parsed, float)):
            return parsed
    if isinstance(parsed, bool) and parsed in schema.get("enum", []):
        return parsed
    return text


def run_ids():
    """The runs to train and compare, in config order (figure colours follow it)."""
    return config["compare"]


def run_id_pattern():
    """A wildcard constraint matching exactly the defined run ids."""
    return "|".join(re.escape(run) for run in config["runs"])


def run_files():
    """Every (run, seed) training output that the config names."""
    return expand(RUN_FILE, run=run_ids(), seed=config["seeds"])


def benchmark_files():
    """The training jobs' benchmark files, in the order of run_files()."""
    return expand(BENCHMARK_FILE, run=run_ids(), seed=config["seeds"])


def train_config(wildcards):
    """What one (run, seed) computes, defaults filled in, as JSON: a change to it, compared by
    value, retrains that run."""
    return run_settings(config, wildcards.run, int(wildcards.seed)).to_json()


def on_off(choice):
    """ssvae-train's on/off/auto value for a true/false/auto config setting."""
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


def all_figures():
    """Every figure of the comparison, in the order of the figure table (the report's order):
    the per-run figures for each compared run that has a decoder, of the figure seed."""
    paths = []
    for figure in FIGURES:
        if not figure.per_run:
            paths.append(comparison_path(figure.stem))
            continue
        for run in run_ids():
            if MODELS[config["runs"][run]["model"]].has_decoder:
                paths.append(per_run_path(figure.stem, run, figure_seed()))
    return paths


def figure_options(wildcards):
    """The ssvae-plot options a figure needs besides its source."""
    values = {
        "threshold": lambda: config["active_kl_threshold"],
        "label": lambda: shlex.quote(run_label(wildcards)),
    }
    figure = BY_STEM[wildcards.figure]
    return " ".join(f"--{name} {values[name]()}" for name in figure.options)


def figure_caption(wildcards):
    return BY_STEM[wildcards.figure].caption


def figure_category(wildcards):
    return BY_STEM[wildcards.figure].category


def figure_labels(wildcards):
    """The columns snakemake's report shows for a figure."""
    labels = {"figure": BY_STEM[wildcards.figure].title}
    if "run" in wildcards.keys():
        labels |= {"run": wildcards.run, "seed": wildcards.seed}
    return labels


def run_label(wildcards):
    return config["runs"][wildcards.run]["label"]


def forget_finished_copies():
    """After a successful call snakemake has recorded every run file it built, so the finished
    copies that let a rerun after an interruption recover them are no longer needed; kept, they
    would make `--forcerun train` recover a run instead of retraining it."""
    for run_file in map(Path, run_files()):
        if run_file.exists():
            checkpoint_file = run_file.with_name(Path(CHECKPOINT_FILE).name)
            finished_copy_path(checkpoint_file).unlink(missing_ok=True)
