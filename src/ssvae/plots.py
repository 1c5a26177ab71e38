"""Figures, drawn from the aggregated metrics file alone (no training code is imported)."""

import colorsys
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ssvae import figures, metrics, runfile  # noqa: E402
from ssvae.cli import entry_point_parser  # noqa: E402
from ssvae.config import config_value  # noqa: E402
from ssvae.errors import exit_on_user_error  # noqa: E402
from ssvae.io import write_atomic  # noqa: E402
from ssvae.splits import N_CLASSES  # noqa: E402

STYLE = "seaborn-v0_8-darkgrid"  # as the original
DPI = figures.PNG_DPI
# Figure sizes in inches, the original's; a PNG has DPI pixels per inch.
PANEL = (9, 6)
TWO_PANELS = (18, 6)
HEATMAP = (18, 5)
KL_COLOUR_MAP = "viridis"  # perceptually uniform, unlike the original's jet
Z_DIMENSIONS = 50
# The two losses differ in kind: a reader must not compare the MLP's curve with the VAEs'.
LOSS_LABEL = "loss (log scale)\nMLP: cross-entropy alone, on another scale"


TAB10 = matplotlib.colormaps["tab10"].colors


def run_colour(palette_index: int):
    """A run's colour, fixed by its place among the defined runs so that it is the same in every
    figure and in every comparison: tab10's ten distinct colours, then golden-ratio hues (the
    original's 9-hue "hls" palette made neighbouring runs hard to tell apart)."""
    if palette_index < len(TAB10):
        return TAB10[palette_index]
    return colorsys.hls_to_rgb((palette_index * 0.618034) % 1, 0.45, 0.75)


def draw_seed_means(
    ax, table, runs, split, metric, *, higher_is_better, statistic="best", title=None
) -> tuple[set, list]:
    """One line per run, the mean over seeds, with a band of one standard deviation; legend
    entries "{label}: {value} at epoch {epoch}" sorted best first (docs/original.md 5.1, 5.2), where
    value is the best value of the mean curve, or its last value for statistic="last", as the
    legend's title says (the original wrote "0.942 (300ep)", which reads as an epoch count). Returns
    the numbers of seeds seen and the labels of the runs with no data."""
    digits = 3 if metric == "accuracy" else 1
    entries, n_seeds, absent = [], set(), []
    for run in runs.itertuples():
        curves = metrics.seed_curves(table, run.run, split, metric)
        if curves.empty:
            absent.append(run.label)
            continue
        colour = run_colour(run.palette_index)
        n_seeds.add(curves.shape[1])
        mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1)
        if statistic == "last":
            epoch = mean.index[-1]
        else:
            epoch = mean.idxmax() if higher_is_better else mean.idxmin()
        value = mean[epoch]
        label = f"{run.label}: {value:.{digits}f} at epoch {epoch}"
        (line,) = ax.plot(mean.index, mean.to_numpy(), color=colour, label=label)
        if curves.shape[1] > 1:
            ax.fill_between(mean.index, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
        entries.append((value, line))
    entries.sort(key=lambda entry: -entry[0] if higher_is_better else entry[0])
    # Right of the axes, where it covers no curve or band; the constrained layout makes room.
    ax.legend(
        handles=[line for _, line in entries],
        title=legend_title(statistic, higher_is_better),
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        borderaxespad=0,
        fontsize=10,
        title_fontsize=10,
    )
    ax.set_title(title or f"{split} {metric}")
    ax.set_xlabel("epochs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric == "accuracy":
        ax.set_ylabel("accuracy")
        # The original's axis starts at 0.5; runs that never reach it (smoke runs) need the rest.
        ax.set_ylim(0.5 if entries and min(v for v, _ in entries) > 0.5 else 0.0, 1.0)
    elif metric == "loss":
        # The original fixed 100-1000, which cut ExactM2's early epochs (up to ~1,300) off and
        # cannot hold the MLP's cross-entropy: a log axis shows every curve and its spikes.
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_ylabel(LOSS_LABEL)
    return n_seeds, absent


def legend_title(statistic: str, higher_is_better: bool) -> str:
    if statistic == "last":
        return "mean over seeds at the last epoch"
    return f"{'highest' if higher_is_better else 'lowest'} value of the mean over seeds"


def _caption_seed_means(fig, n_seeds: set, absent: list[str] = ()) -> None:
    seeds = "/".join(str(n) for n in sorted(n_seeds)) or "0"
    text = f"line: mean over seeds ({seeds} per run); band: ± 1 standard deviation across seeds"
    if absent:
        text += f"\nnot drawn, having no latent space: {', '.join(absent)}"
    _caption(fig, text)


def _caption(fig, text: str) -> None:
    """`text` under the axes, at the figure's foot."""
    caption = fig.text(0.01, 0.012, text, fontsize=11, color="0.25", linespacing=1.3)
    # The constrained layout places the axes and legends only: keep them above the caption.
    top = caption.get_window_extent(fig.canvas.get_renderer()).y1 / fig.bbox.height
    fig.get_layout_engine().set(rect=(0, top, 1, 1 - top))


def save(fig, out_path: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write `fig` to `out_path` (a PNG) and beside it with the same stem in the other
    `formats`, all rendered before any is written; returns the files written."""
    rendered = {}
    for extension in formats:
        buffer = io.BytesIO()
        # No creation date in a PDF: the same figure gives the same bytes.
        metadata = {"CreationDate": None} if extension == "pdf" else None
        fig.savefig(buffer, format=extension, dpi=DPI, metadata=metadata)
        rendered[out_path.with_suffix(f".{extension}")] = buffer.getvalue()
    plt.close(fig)
    for path, content in rendered.items():
        write_atomic(path, content)
    return list(rendered)


def accuracy_figure(table, runs):
    """Validation accuracy of every run over epochs (docs/original.md 5.1), PANEL inches."""
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=PANEL, dpi=DPI, layout="constrained")
        n_seeds, _ = draw_seed_means(ax, table, runs, "valid", "accuracy", higher_is_better=True)
        _caption_seed_means(fig, n_seeds)
    return fig


def accuracy_loss_figure(table, runs, split: str):
    """Accuracy and loss of every run over epochs on one split (docs/original.md 5.2),
    TWO_PANELS inches."""
    with plt.style.context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=TWO_PANELS, dpi=DPI, layout="constrained")
        n_seeds, _ = draw_seed_means(left, table, runs, split, "accuracy", higher_is_better=True)
        draw_seed_means(right, table, runs, split, "loss", higher_is_better=False)
        _caption_seed_means(fig, n_seeds)
    return fig


def active_dims_figure(active, runs, threshold: float):
    """How many z dimensions stay active (validation-mean KL above `threshold`) over epochs,
    per run (beyond the original), PANEL inches."""
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=PANEL, dpi=DPI, layout="constrained")
        title = f"valid active z dimensions (mean KL > {threshold:g} nats)"
        n_seeds, absent = draw_seed_means(
            ax,
            active,
            runs,
            "valid",
            "active_dims",
            higher_is_better=True,
            statistic="last",
            title=title,
        )
        ax.set_ylabel(f"active dimensions (of {Z_DIMENSIONS})")
        ax.set_ylim(0, Z_DIMENSIONS)
        _caption_seed_means(fig, n_seeds, absent)
    return fig


def labels_title(labels_per_class: int) -> str:
    return f"{N_CLASSES * labels_per_class:,} labeled images ({labels_per_class} a class)"


def accuracy_vs_labels_figure(tables: list[str], published):
    """Last-epoch validation and test accuracy of every run against the number of labeled
    images, log axis: the mean over seeds with its 95% interval, one metrics table per label
    count; the published M2 test accuracy beside them at the label counts compared (beyond the
    original), TWO_PANELS inches."""
    points = accuracy_by_label_count(tables)
    counts = sorted(points.labels.unique())
    published = published[published.labels.isin(counts)]
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=TWO_PANELS, dpi=DPI, layout="constrained")
        for ax, (name, title) in zip(axes, LABEL_COUNT_PANELS.items(), strict=True):
            for _, rows in points[points.statistic == name].groupby("run", sort=False):
                below, above = rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]
                ax.errorbar(rows.labels, rows["mean"], yerr=[below.fillna(0), above.fillna(0)],
                            color=run_colour(rows.palette_index.iloc[0]), marker="o",
                            capsize=4, label=rows.label.iloc[0])  # fmt: skip
            if name == "test_accuracy" and not published.empty:
                ax.errorbar(published.labels, 1 - published.test_error_percent / 100,
                            yerr=published.std_percent / 100, color="black", marker="D",
                            linestyle="none", capsize=4, label=PUBLISHED_M2)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xticks(counts, [f"{n:,}" for n in counts])
            ax.minorticks_off()
            ax.set_title(title)
            ax.set_xlabel("labeled images (log scale)")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=10)
        _caption(fig, "point: mean over seeds; bar: its 95% interval (Student's t, clipped to "
                 "[0, 1])")  # fmt: skip
    return fig


LABEL_COUNT_PANELS = {
    "valid_accuracy_last": "validation accuracy at the last epoch",
    "test_accuracy": "test accuracy",
}
PUBLISHED_M2 = "M2, Kingma et al. (2014), Table 1"


def accuracy_by_label_count(tables: list[str]):
    """One row per (label count, run, statistic): mean over seeds and its 95% interval."""
    rows = []
    for path in tables:
        table, runs = metrics.read_table(path), metrics.read_runs(path).sort_values("order")
        labels = N_CLASSES * metrics.read_labels_per_class(path)
        for run in runs.itertuples():
            for name, values in metrics.per_seed_accuracies(table, run.run).items():
                rows.append({"run": run.run, "label": run.label, "order": run.order,
                             "palette_index": run.palette_index, "labels": labels,
                             "statistic": name} | metrics.mean_interval(values))  # fmt: skip
    return pd.DataFrame(rows).sort_values(["order", "labels"])


SIDE, GAP, BLOCK_GAP, BLOCK_ROWS, BLOCK_COLS = 28, 3, 12, 4, 25  # docs/original.md 5.3, in pixels


def sample_grid(samples: np.ndarray) -> np.ndarray:
    """1000 decoder means (classes 0..9 in blocks of 100) as one image: a block of 4 x 25 cells
    per class, top to bottom, each 28 px cell followed by a 3 px gap, 12 px between blocks."""
    cell = SIDE + GAP
    block_height = BLOCK_ROWS * cell
    per_class = samples.reshape(-1, BLOCK_ROWS * BLOCK_COLS, SIDE, SIDE)
    n_classes = len(per_class)
    grid = np.zeros(
        (n_classes * block_height + (n_classes - 1) * BLOCK_GAP, BLOCK_COLS * cell), samples.dtype
    )
    for label, images in enumerate(per_class):
        for i, image in enumerate(images):
            row, col = divmod(i, BLOCK_COLS)
            top = label * (block_height + BLOCK_GAP) + row * cell
            grid[top : top + SIDE, col * cell : col * cell + SIDE] = image
    return grid


SAMPLES_MARGINS = {"left": 48, "right": 16, "top": 64, "bottom": 16}  # pixels around the grid


def points(pixels: float) -> float:
    """A font size in points that is `pixels` high in the PNG."""
    return pixels * 72 / DPI


def samples_figure(samples: np.ndarray, epoch: int, label: str, seed: int):
    """The decoder's Bernoulli means at one evaluation (docs/original.md 5.3), one PNG pixel per
    image pixel: the canvas is the grid (775 x 1348 px) and its margins, each class block labelled
    with its digit, sized in pixels whatever DPI is. (The original shrank the grid into
    1152 x 1152, blurring each digit.)"""
    grid = sample_grid(samples)
    margin = SAMPLES_MARGINS
    height = grid.shape[0] + margin["top"] + margin["bottom"]
    width = grid.shape[1] + margin["left"] + margin["right"]
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes(
        (margin["left"] / width, margin["bottom"] / height, grid.shape[1] / width,
         grid.shape[0] / height)
    )  # fmt: skip
    # As RGB rather than through a colour map, whose 256-entry table shifts some grey levels.
    ax.imshow(np.repeat(grid[..., None], 3, axis=2), interpolation="nearest")
    ax.set_axis_off()
    block = BLOCK_ROWS * (SIDE + GAP) + BLOCK_GAP
    for digit in range(len(grid) // block + 1):
        ax.text(-12, digit * block + BLOCK_ROWS * (SIDE + GAP) / 2, str(digit),
                fontsize=points(20), ha="right", va="center")  # fmt: skip
    title = f"{figures.BY_STEM['samples'].title}: {label}, seed {seed}, epoch {epoch}"
    fig.suptitle(title, fontsize=points(16), y=1 - 20 / height, va="center")
    return fig


def kl_per_dimension(mu: np.ndarray, logcov2: np.ndarray) -> np.ndarray:
    return 0.5 * (np.exp(logcov2) + mu**2 - 1.0 - logcov2)


def kl_heatmap_figure(epochs: np.ndarray, kl: np.ndarray, label: str, seed: int):
    """KL of each z dimension for the last 100 q(z|.) rows of every validation, `kl` being
    (validations, rows, z dimensions): one column per row, in the original's drawing
    (docs/original.md 5.4), a white line where one validation's rows end, HEATMAP inches."""
    validations, rows, _ = kl.shape
    fig, ax = _kl_map(kl.reshape(validations * rows, -1), "KL_Z", label, seed)
    ax.vlines(np.arange(1, validations) * rows, 0, kl.shape[2], colors="white", linewidths=0.8)
    _label_validations(ax, epochs, rows)
    ax.set_xlabel(f"epoch of each validation (its last {rows} q(z|x) rows, between white lines)")
    return fig


def kl_mean_heatmap_figure(epochs: np.ndarray, kl_mean: np.ndarray, label: str, seed: int):
    """KL of each z dimension averaged over the whole validation set, one column per validation
    (beyond the original, which drew one batch), HEATMAP inches."""
    fig, ax = _kl_map(kl_mean, "KL_Z_valid_mean", label, seed)
    _label_validations(ax, epochs, 1)
    ax.set_xlabel("epochs")
    return fig


def _kl_map(kl_columns: np.ndarray, stem: str, label: str, seed: int):
    """Figure `stem`: the (columns, z dimensions) KL of one run as a colour map."""
    fig, ax = plt.subplots(figsize=HEATMAP, dpi=DPI)
    mesh = ax.pcolormesh(kl_columns.T, cmap=KL_COLOUR_MAP)
    ax.set_xlim(0, kl_columns.shape[0])
    ax.set_ylim(0, kl_columns.shape[1])
    ax.set_ylabel("z dimension")
    ax.set_title(f"{figures.BY_STEM[stem].title}: {label}, seed {seed}")
    fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.03).set_label("KL (nats)")
    fig.subplots_adjust(left=0.04, right=0.97, top=0.9, bottom=0.15)
    return fig, ax


def _label_validations(ax, epochs: np.ndarray, columns: int) -> None:
    """Ticks at the middle of each validation's `columns`, with its epoch; one per validation
    is unreadable at 31 validations, so at most 16 are labelled."""
    every = -(-len(epochs) // 16)
    ticks = np.arange(0, len(epochs), every)
    ax.set_xticks((ticks + 0.5) * columns, [str(epochs[i]) for i in ticks])


def _runs(args):
    return metrics.read_runs(args.metrics).sort_values("order")


def _accuracy(args):
    return accuracy_figure(metrics.read_table(args.metrics), _runs(args))


def _accuracy_loss(split: str):
    def draw(args):
        return accuracy_loss_figure(metrics.read_table(args.metrics), _runs(args), split)

    return draw


def _active_dims(args):
    active = metrics.active_dims(args.metrics, args.threshold)
    return active_dims_figure(active, _runs(args), args.threshold)


def _samples(args):
    samples = runfile.read_arrays(args.run_file, "samples")
    seed = runfile.read_attrs(args.run_file)["seed"]
    return samples_figure(samples["p(x)"][-1], samples["epoch"][-1], args.label, seed)


def _kl_z(args):
    z_stats = runfile.read_arrays(args.run_file, "z_stats")
    kl = kl_per_dimension(z_stats["mu_last_batch"], z_stats["logcov2_last_batch"])
    seed = runfile.read_attrs(args.run_file)["seed"]
    return kl_heatmap_figure(z_stats["epoch"], kl, args.label, seed)


def _kl_z_mean(args):
    z_stats = runfile.read_arrays(args.run_file, "z_stats")
    seed = runfile.read_attrs(args.run_file)["seed"]
    return kl_mean_heatmap_figure(z_stats["epoch"], z_stats["kl_per_dim_mean"], args.label, seed)


def _accuracy_vs_labels(args):
    published = pd.read_csv(args.published, comment="#")
    return accuracy_vs_labels_figure(args.label_count_metrics, published)


# How each figure of ssvae.figures is drawn, by its stem.
DRAW = {
    "multi_seed_accuracy": _accuracy,
    "multi_seed_accuracy_loss_valid": _accuracy_loss("valid"),
    "multi_seed_accuracy_loss_train": _accuracy_loss("train"),
    "active_dims": _active_dims,
    "samples": _samples,
    "KL_Z": _kl_z,
    "KL_Z_valid_mean": _kl_z_mean,
    "accuracy_vs_labels": _accuracy_vs_labels,
}
# The option that names each source of figures.
SOURCE_OPTIONS = {"metrics": "metrics", "run file": "run_file", "summaries": "label_count_metrics"}


def draw(figure: figures.Figure, args):
    """The figure, from its sources in `args`; a comparison figure says its label count."""
    fig = DRAW[figure.stem](args)
    if figure.source == "metrics":
        fig.suptitle(labels_title(metrics.read_labels_per_class(args.metrics)))
    return fig


def needs(figure: figures.Figure) -> list[str]:
    """The options a figure needs besides --out: its source, then its own."""
    return [SOURCE_OPTIONS[figure.source], *figure.options]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def main(argv: list[str] | None = None) -> None:
    needed = "\n".join(
        f"  {figure.stem:<32} {' '.join(map(_option, needs(figure)))}"
        for figure in figures.BY_STEM.values()
    )
    parser = entry_point_parser(
        "ssvae-plot",
        "Render a figure from the aggregated metrics or from one run's file.",
        epilog=f"each figure reads:\n{needed}\na comparison figure's --metrics and --out default "
        "to the workflow's <results-dir>/metrics/metrics.h5 and <results-dir>/plots/<figure>.png; "
        f"it is also written as {figures.VECTOR_FORMAT.upper()}, beside the PNG with the same "
        "stem; a per-run figure needs --out",
    )
    parser.add_argument("figure", choices=list(figures.BY_STEM), help="the figure to draw")
    parser.add_argument("--metrics", type=Path, help="aggregated metrics .h5 (comparison figures)")
    parser.add_argument(
        "--threshold",
        type=config_value("active_kl_threshold"),
        help="KL in nats above which a z dimension counts as active",
    )
    parser.add_argument(
        "--run-file", type=Path, help="one run's run file, run.h5 (per-run figures)"
    )
    parser.add_argument("--label", help="the run's label in titles (per-run figures)")
    parser.add_argument(
        "--label-count-metrics",
        type=Path,
        nargs="+",
        help="the aggregated metrics .h5 of each label count (accuracy_vs_labels)",
    )
    parser.add_argument(
        "--published",
        type=Path,
        help="CSV of published test errors by number of labels: labels, test_error_percent, "
        "std_percent; lines starting with # are comments (accuracy_vs_labels)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"PNG to write, its name ending in .png (a comparison figure's "
        f"{figures.VECTOR_FORMAT.upper()} goes beside it)",
    )
    parser.add_argument(
        "--results-dir",
        default="results",
        help="the configuration's results_dir, where a comparison figure's defaults are",
    )
    args = parser.parse_args(argv)
    figure = figures.BY_STEM[args.figure]
    if figure.source == "metrics":
        args.metrics = args.metrics or Path(figures.metrics_path(args.results_dir))
    if not figure.per_run:
        args.out = args.out or Path(figures.comparison_path(args.results_dir, figure.stem))
    elif args.out is None:
        parser.error(f"figure {args.figure} needs --out")
    if args.out.suffix != ".png":
        parser.error(f"--out {args.out}: not a .png file name")
    missing = [name for name in needs(figure) if getattr(args, name) is None]
    if missing:
        parser.error(f"figure {args.figure} needs {_option(missing[0])}")
    with exit_on_user_error("ssvae-plot"):
        written = save(draw(figure, args), args.out, figure.formats)
    print(f"wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
