"""Every figure of the comparison, named once. ssvae-plot draws a figure by its stem, the
workflow's rules build and list them from this table, and results/report.md and snakemake's
HTML report take their titles, captions and categories from it. No plotting code is imported
here: the workflow reads this table when it plans."""

from dataclasses import dataclass

PLOTS_DIR = "plots"  # inside the configuration's results_dir
# Every figure is a PNG at PNG_DPI (the original's 72 dpi is too coarse for print); a comparison
# figure is also a vector file for a paper, beside its PNG with the same stem. The reports embed
# the PNGs. The decoder samples keep one image pixel per PNG pixel at any resolution.
PNG_DPI = 300
VECTOR_FORMAT = "pdf"


@dataclass(frozen=True)
class Figure:
    stem: str  # the file name without its extension; per-run figures add _{run}_seed{seed}
    # "metrics": the aggregated metrics of every run; "run file": one run's file; "summaries":
    # the summary of every label count
    source: str
    title: str  # the report's section heading
    caption: str  # one or two sentences: what is drawn, and how to read it
    category: str  # the category of snakemake's report
    options: tuple[str, ...] = ()  # ssvae-plot options it needs besides its source

    @property
    def per_run(self) -> bool:
        return self.source == "run file"

    @property
    def formats(self) -> tuple[str, ...]:
        """The extensions of its files, the PNG first."""
        return ("png",) if self.per_run else ("png", VECTOR_FORMAT)


FIGURES = (
    Figure(
        "multi_seed_accuracy",
        "metrics",
        "Validation accuracy",
        "Validation accuracy of every run over epochs (docs/original.md 5.1). Line: the mean "
        "over seeds; band: ± 1 standard deviation across seeds. The legend ranks runs by the "
        "best value of the mean curve, with the epoch it occurs at.",
        "Comparison",
    ),
    Figure(
        "multi_seed_accuracy_loss_valid",
        "metrics",
        "Validation accuracy and loss",
        "Accuracy and loss on the 10,000 validation images (docs/original.md 5.2), log-scaled "
        "loss axis. A VAE's loss is its negative bound on the unlabeled and the labeled images "
        "plus the weighted classifier cross-entropy, per unlabeled image (nats); the MLP's is "
        "its weighted classifier cross-entropy alone, not on the VAEs' scale. Band: ± 1 "
        "standard deviation across seeds.",
        "Comparison",
    ),
    Figure(
        "multi_seed_accuracy_loss_train",
        "metrics",
        "Training accuracy and loss",
        "Accuracy on the labeled minibatches and loss, averaged over each training epoch "
        "(docs/original.md 5.2); the loss is as in the validation figure. Band: ± 1 standard "
        "deviation across seeds.",
        "Comparison",
    ),
    Figure(
        "active_dims",
        "metrics",
        "Active latent dimensions",
        "How many of the 50 z dimensions stay active (their KL, averaged over the validation "
        "set, above the threshold) over epochs, per run with a latent space; the MLP has none "
        "and is not drawn (beyond the original).",
        "Latent statistics",
        ("threshold",),
    ),
    Figure(
        "samples",
        "run file",
        "Decoder samples",
        "Decoder means p(x|y,z) at the last evaluation for z ~ N(0, I): one block of 100 per "
        "class, classes 0 to 9 from top to bottom (docs/original.md 5.3).",
        "Per run",
        ("label",),
    ),
    Figure(
        "KL_Z",
        "run file",
        "KL per latent dimension, last validation batch",
        "KL of each z dimension for the last 100 q(z|.) rows of every validation, one column "
        "per row, in evaluation order (docs/original.md 5.4); white lines separate the "
        "validations, labelled by epoch.",
        "Latent statistics",
        ("label",),
    ),
    Figure(
        "KL_Z_valid_mean",
        "run file",
        "KL per latent dimension, averaged over the validation set",
        "KL of each z dimension averaged over all 10,000 validation images, one column per "
        "validation (beyond the original, which drew one batch).",
        "Latent statistics",
        ("label",),
    ),
)
# Drawn across the label counts of a configuration (labels_per_class), from each one's summary.
LABEL_COUNT_FIGURE = Figure(
    "accuracy_vs_labels",
    "summaries",
    "Accuracy against the number of labels",
    "Validation accuracy at the last epoch (left) and test accuracy (right) of every run against "
    "the number of labeled images (log axis): the mean over seeds with its 95% interval "
    "(Student's t, clipped to [0, 1]). Black diamonds: M2 of Kingma, Rezende, Mohamed and "
    "Welling, Semi-supervised learning with deep generative models (NeurIPS 2014), Table 1, "
    "test accuracy with its reported standard deviation, where published (beyond the original).",
    "Comparison",
    ("published",),
)
BY_STEM = {figure.stem: figure for figure in (*FIGURES, LABEL_COUNT_FIGURE)}


def metrics_path(results_dir: str) -> str:
    """The aggregated metrics table every comparison figure is drawn from."""
    return f"{results_dir}/metrics/metrics.h5"


def comparison_path(results_dir: str, stem: str, extension: str = "png") -> str:
    return f"{results_dir}/{PLOTS_DIR}/{stem}.{extension}"


def per_run_path(results_dir: str, stem: str, run: str, seed: int | str) -> str:
    return f"{results_dir}/{PLOTS_DIR}/{stem}_{run}_seed{seed}.png"


def figure_of(file_name: str) -> Figure:
    """The figure a PNG's file name belongs to: the longest stem it starts with."""
    for stem in sorted(BY_STEM, key=len, reverse=True):
        if file_name == f"{stem}.png" or file_name.startswith(f"{stem}_"):
            return BY_STEM[stem]
    raise ValueError(f"figure {file_name}: not a figure of the comparison")
