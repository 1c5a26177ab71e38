import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from ssvae.config import ConfigError, run_settings
from ssvae.errors import UserError
from ssvae.data import ARRAYS_FORMAT
from ssvae.workflow_config import validate
from ssvae.figures import (
    BY_STEM,
    FIGURES,
    LABEL_COUNT_FIGURE,
    VECTOR_FORMAT,
    comparison_path,
    metrics_path,
    per_run_path,
)
from ssvae.models import MODELS
from ssvae import runfile
from ssvae.splits import (
    LABEL_COUNT_DIR,
    N_CLASSES,
    ORIGINAL_LABELS_PER_CLASS,
    SPLIT_FORMAT,
    SPLITS_DIR,
    SPLIT_NAME,
    labels_per_class_of,
    labels_root,
    labels_suffix,
)
from ssvae.store import request_retrain


def validate_config(config):
    """Stop before any job with one line naming the first invalid key and its value;
    settings are defined in the package's schema, src/ssvae/config.schema.yaml."""
    try:
        validate(config)
    except ConfigError as err:
        sys.exit(str(err))  # the line alone: a WorkflowError would add its traceback


# Before the paths below, which follow the config.
validate_config(config)

# MNIST and the labeled splits are the same for every configuration: shared, identified by
# their content.
MNIST_RAW_DIR = "results/data/mnist/raw"
MNIST_ARRAYS = "results/data/mnist.npz"
SPLIT_FILE = f"{SPLITS_DIR}{{labels}}/{SPLIT_NAME}"
# Everything else of a configuration lives under its results_dir, so that a preset (the smoke
# run) never writes over another configuration's results.
RESULTS = config["results_dir"]
# What depends on the label count lives under results_dir plus {labels}: nothing for the
# original's 10 labels a class, a directory labels_per_class<k> for any other
# (ssvae.splits.labels_suffix; the Snakefile constrains {labels} to these).
LABELS_ROOT = f"{RESULTS}{{labels}}"
RUN_FILE = f"{LABELS_ROOT}/{runfile.RUN_FILE}"
# Finished run files by what they computed (ssvae.store): what a training job recovers from.
RESULT_STORE = f"{RESULTS}/store"
METRICS_H5 = metrics_path(LABELS_ROOT)
ACCURACY_VS_LABELS = comparison_path(RESULTS, LABEL_COUNT_FIGURE.stem)


def labels_per_class(wildcards):
    """The label count a job's {labels} names."""
    return labels_per_class_of(wildcards.labels)


def labels_pattern():
    """A wildcard constraint matching the {labels} of the configured label counts only (a
    count outside them was never checked)."""
    # A group: snakemake takes an empty constraint (the original's 10 alone) for none.
    suffixes = "|".join(re.escape(labels_suffix(k)) for k in config["labels_per_class"])
    return f"(?:{suffixes})"


# The original's 10-seed numbers per run label (docs/original.md, section 8).
REFERENCE_RESULTS = "workflow/resources/reference_results.csv"
# Kingma et al.'s (2014) M2 by number of labels, drawn beside the runs across label counts.
PUBLISHED_M2 = "workflow/resources/kingma2014_m2.csv"
# Source files whose edits must re-render what they produce (and nothing upstream).
PACKAGE_DIR = Path(workflow.basedir).parent / "src" / "ssvae"


def run_ids():
    """The runs to train and compare, in config order (figure colours follow it)."""
    return config["compare"]


def run_id_pattern():
    """A wildcard constraint matching exactly the defined run ids."""
    return "|".join(re.escape(run) for run in config["runs"])


def undefined_run_pattern():
    """A wildcard constraint matching any run id but the defined ones."""
    return rf"(?!(?:{run_id_pattern()})/)[^/]+"


def refuse_undefined_run(wildcards):
    """Stop planning with one line naming the defined runs (snakemake's MissingRuleException
    would name none)."""
    sys.exit(
        f"{RUN_FILE.format(**wildcards)}: no run {wildcards.run!r} is defined in runs "
        f"(defined: {', '.join(config['runs'])})"
    )


def unconfigured_count_pattern():
    """A wildcard constraint for a label count whose directory no configured count makes."""
    made = "|".join(str(k) for k in config["labels_per_class"] if labels_suffix(k))
    return rf"(?!(?:{made})/)\d+" if made else r"\d+"


def refuse_unconfigured_count(wildcards):
    """Stop planning with one line naming the configured counts (snakemake's
    MissingRuleException would name none)."""
    asked = f"{RESULTS}/{LABEL_COUNT_DIR}{wildcards.label_count}/{wildcards.path}"
    if int(wildcards.label_count) == ORIGINAL_LABELS_PER_CLASS:
        sys.exit(
            f"{asked}: the original's count is built in {RESULTS}/{wildcards.path}"
        )
    configured = ", ".join(str(k) for k in config["labels_per_class"])
    sys.exit(
        f"{asked}: labels_per_class {wildcards.label_count} is not configured (labels_per_class: "
        f"[{configured}]); add it to labels_per_class in the config, or with --config "
        f"'labels_per_class=[...]'"
    )


def run_files(labels):
    """Every (run, seed) training output that the config names, at one label count."""
    return expand(RUN_FILE, labels=labels, run=run_ids(), seed=config["seeds"])


def seed_packs():
    """The configured seeds in the training jobs that train them together, seeds_per_job at a
    time in config order; none when each seed has a job of its own (the rule train)."""
    seeds, per_job = config["seeds"], config["train_resources"]["seeds_per_job"]
    if per_job == 1:
        return []
    return [seeds[i : i + per_job] for i in range(0, len(seeds), per_job)]


def packed_seed_pattern():
    """A wildcard constraint for the seeds of the rule train, those that no pack trains."""
    packed = [str(seed) for pack in seed_packs() for seed in pack]
    # Not followed by another digit: seed 12 is no pack's when seed 1 is.
    return rf"(?!(?:{'|'.join(packed)})(?!\d))\d+" if packed else r"\d+"


def run_config(wildcards):
    """What a run computes, defaults filled in, as JSON; the same for each of its seeds (the
    seed comes from its split), so that a job of any seeds records the same value. A change to
    it, compared by value, retrains that run."""
    settings = json.loads(run_settings(config, wildcards.run, 0).to_json())
    del settings["seed"]
    return json.dumps(settings, sort_keys=True)


def job_checkpoints(wildcards, output):
    """Each seed's checkpoint, beside its run file. A function of the outputs, so
    that snakemake does not compare it between runs: which seeds share a job is not
    what they compute."""
    return [str(runfile.checkpoint_path(path)) for path in output]


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


def all_figures(labels_per_class):
    """Every figure of the comparison at one label count, in the order of the figure table
    (the report's order): the per-run figures for each compared run that has a decoder, of the
    figure seed."""
    root = labels_root(RESULTS, labels_per_class)
    paths = []
    for figure in FIGURES:
        if figure.source == "metrics":
            paths.append(comparison_path(root, figure.stem))
        elif figure.per_run:
            for run in run_ids():
                if MODELS[config["runs"][run]["model"]].has_decoder:
                    paths.append(per_run_path(root, figure.stem, run, figure_seed()))
    return paths


def final_outputs():
    """Everything a plain snakemake call builds: at each label count its report, figures and
    summary, and with two or more label counts the figure across them."""
    outputs = []
    for k in config["labels_per_class"]:
        root = labels_root(RESULTS, k)
        outputs += [f"{root}/report.md", *all_figures(k), f"{root}/metrics/summary.csv"]
    if len(config["labels_per_class"]) > 1:
        outputs.append(ACCURACY_VS_LABELS)
    return outputs


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
    labels["labeled images"] = str(N_CLASSES * labels_per_class(wildcards))
    if "run" in wildcards.keys():
        labels |= {"run": wildcards.run, "seed": wildcards.seed}
    return labels


def run_label(wildcards):
    """A run's label in its per-run figures' titles, with the label count where it is not the
    original's."""
    label = config["runs"][wildcards.run]["label"]
    if labels_per_class(wildcards) != ORIGINAL_LABELS_PER_CLASS:
        label += f", {N_CLASSES * labels_per_class(wildcards):,} labels"
    return label


def label_count_metrics():
    """The metrics table of every configured label count, in config order."""
    return [metrics_path(labels_root(RESULTS, k)) for k in config["labels_per_class"]]


def is_training_rule(name):
    return name == "train" or name.startswith("train_seeds_")


def forced_by_user(job):
    """Whether the user forced this job: -F, or its rule or one of its outputs named by
    --forcerun (-R), or by -f among the targets. Snakemake's own 'forced' also covers the
    outputs --rerun-incomplete adds, which must be recovered, not retrained."""
    settings = workflow.dag_settings
    if settings.forceall:
        return True
    named = set(settings.forcerun)
    if settings.forcetargets:
        named |= set(settings.targets)
    paths = {os.path.abspath(name) for name in named}
    outputs = {os.path.abspath(path) for path in job.output}
    return job.rule.name in named or not paths.isdisjoint(outputs)


def request_forced_retrains():
    """Before any job runs: every run file of a training job that the user forced (by file or
    rule, -f, -F, -R) is asked to train anew (ssvae.store), so that neither the result store
    nor a checkpoint of an earlier call stands in for it, whatever the config lists. A job that
    runs for any other reason (an input rebuilt, a setting changed back, snakemake interrupted)
    takes its computation from the store where it is there."""
    if workflow.touch:
        return  # --touch marks outputs up to date; nothing trains
    dag = workflow.dag
    for job in dag.needrun_jobs():
        if is_training_rule(job.rule.name) and forced_by_user(job):
            for run_file in job.output:
                try:
                    request_retrain(Path(run_file))
                except UserError as err:
                    raise WorkflowError(str(err)) from None
