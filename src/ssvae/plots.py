"""Figures, drawn from the aggregated metrics file alone (no training code is imported)."""

import colorsys
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssvae import metrics, runfile  # noqa: E402
from ssvae.cli import entry_point_parser  # noqa: E402
from ssvae.errors import exit_on_user_error  # noqa: E402
from ssvae.io import write_atomic  # noqa: E402

STYLE = "seaborn-v0_8-darkgrid"  # the original used seaborn's darkgrid at 72 dpi
DPI = 72
Z_DIMENSIONS = 50


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
) -> set:
    """One line per run, the mean over seeds, with a band of one standard deviation; legend
    entries "{value} ({epochs}ep) {label}" sorted best first (spec 5.1, 5.2), where value is the
    best epoch of the mean curve, or its last epoch for statistic="last". Returns the numbers of
    seeds seen."""
    best = max if higher_is_better else min
    digits = 3 if metric == "accuracy" else 1
    entries, n_seeds = [], set()
    for run in runs.itertuples():
        curves = metrics.seed_curves(table, run.run, split, metric)
        if curves.empty:
            continue
        colour = run_colour(run.palette_index)
        n_seeds.add(curves.shape[1])
        mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1)
        value = best(mean) if statistic == "best" else mean.iloc[-1]
        label = f"{value:.{digits}f} ({curves.index.max()}ep) {run.label}"
        (line,) = ax.plot(mean.index, mean.to_numpy(), color=colour, label=label)
        if curves.shape[1] > 1:
            ax.fill_between(mean.index, mean - std, mean + std, color=colour, alpha=0.12, lw=0)
        entries.append((value, line))
    entries.sort(key=lambda entry: -entry[0] if higher_is_better else entry[0])
    location = "lower right" if higher_is_better else "upper left"
    # A framed legend stays readable where curves run under it.
    ax.legend(
        handles=[line for _, line in entries],
        loc=location,
        fontsize=10,
        frameon=True,
        framealpha=0.85,
    )
    ax.set_title(title or f"{split} {metric}")
    ax.set_xlabel("epochs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric == "accuracy":
        # The original's axis starts at 0.5; runs that never reach it (smoke runs) need the rest.
        ax.set_ylim(0.5 if entries and min(v for v, _ in entries) > 0.5 else 0.0, 1.0)
    elif metric == "loss" and any(100 <= v <= 1000 for v, _ in entries):
        ax.set_ylim(100, 1000)  # the original's loss axis; validation spikes fill the panel
    return n_seeds


def _caption_seed_means(fig, n_seeds: set, legend: str) -> None:
    seeds = "/".join(str(n) for n in sorted(n_seeds)) or "0"
    fig.text(
        0.01,
        0.01,
        f"line: mean over seeds ({seeds} per run); band: ± 1 std across seeds; legend: {legend}",
        fontsize=8,
        color="0.3",
    )


BEST_EPOCH = "best epoch of the mean curve (the original's statistic, reconstructed)"


def save(fig, out_path: Path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    plt.close(fig)
    write_atomic(out_path, png.getvalue())


def accuracy_figure(table, runs):
    """Validation accuracy of every run over epochs (spec 5.1), 648 x 432 px."""
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 6), dpi=DPI)
        n_seeds = draw_seed_means(ax, table, runs, "valid", "accuracy", higher_is_better=True)
        fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.14)
        _caption_seed_means(fig, n_seeds, BEST_EPOCH)
    return fig


def accuracy_loss_figure(table, runs, split: str):
    """Accuracy and loss of every run over epochs on one split (spec 5.2), 1296 x 432 px."""
    with plt.style.context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(18, 6), dpi=DPI)
        n_seeds = draw_seed_means(left, table, runs, split, "accuracy", higher_is_better=True)
        draw_seed_means(right, table, runs, split, "loss", higher_is_better=False)
        fig.subplots_adjust(left=0.04, right=0.99, top=0.93, bottom=0.14, wspace=0.12)
        _caption_seed_means(fig, n_seeds, BEST_EPOCH)
    return fig


def active_dims_figure(active, runs, threshold: float):
    """How many z dimensions stay active (validation-mean KL above `threshold`) over epochs,
    per run (beyond the original), 648 x 432 px."""
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 6), dpi=DPI)
        title = f"valid active z dimensions (mean KL > {threshold:g} nats)"
        n_seeds = draw_seed_means(
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
        fig.subplots_adjust(left=0.09, right=0.98, top=0.93, bottom=0.14)
        _caption_seed_means(fig, n_seeds, "the mean curve at its last epoch")
    return fig


SIDE, GAP, BLOCK_GAP, BLOCK_ROWS, BLOCK_COLS = 28, 3, 12, 4, 25  # spec 5.3, in pixels


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


def samples_figure(samples: np.ndarray, epoch: int, label: str, seed: int):
    """The decoder's Bernoulli means at one evaluation (spec 5.3), 1152 x 1152 px."""
    fig = plt.figure(figsize=(16, 16), dpi=DPI)
    ax = fig.add_axes((0.02, 0.01, 0.96, 0.93))
    ax.imshow(sample_grid(samples), cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title(f"{label} seed={seed}\np(x)  (epoch {epoch})", fontsize=16)
    return fig


def kl_per_dimension(mu: np.ndarray, logcov2: np.ndarray) -> np.ndarray:
    return 0.5 * (np.exp(logcov2) + mu**2 - 1.0 - logcov2)


def kl_heatmap_figure(kl_rows: np.ndarray, label: str, seed: int):
    """KL of each z dimension for the last 100 q(z|.) rows of every validation, one column per
    row, in the original's drawing (spec 5.4), 1296 x 360 px."""
    fig, ax = plt.subplots(figsize=(18, 5), dpi=DPI)
    ax.pcolormesh(kl_rows.T, cmap="jet")
    ax.set_xlim(0, kl_rows.shape[0])
    ax.set_ylim(0, kl_rows.shape[1])
    ax.set_xlabel("examples ordered by iteration #")
    ax.set_ylabel("Z index")
    ax.set_title(f"({label} seed={seed}, valid, p(x), KL)")
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=0.15)
    return fig


def kl_mean_heatmap_figure(epochs: np.ndarray, kl_mean: np.ndarray, label: str, seed: int):
    """KL of each z dimension averaged over the whole validation set, one column per validation
    (beyond the original, which drew one batch), 1296 x 360 px."""
    fig, ax = plt.subplots(figsize=(18, 5), dpi=DPI)
    mesh = ax.pcolormesh(kl_mean.T, cmap="jet")
    ax.set_xlim(0, len(epochs))
    ax.set_ylim(0, kl_mean.shape[1])
    # One tick per validation is unreadable at 31 validations: label at most 16 of them.
    every = -(-len(epochs) // 16)
    ticks = np.arange(0, len(epochs), every)
    ax.set_xticks(ticks + 0.5, [str(epochs[i]) for i in ticks])
    ax.set_xlabel("epochs")
    ax.set_ylabel("Z index")
    ax.set_title(f"({label} seed={seed}, valid, p(x), KL averaged over the validation set)")
    fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.03).set_label("KL (nats)")
    fig.subplots_adjust(left=0.04, right=0.97, top=0.9, bottom=0.15)
    return fig


def _runs(args):
    return metrics.read_runs(args.metrics).sort_values("order")


def _accuracy(args):
    return accuracy_figure(metrics.read_table(args.metrics), _runs(args))


def _accuracy_loss(args):
    return accuracy_loss_figure(metrics.read_table(args.metrics), _runs(args), args.split)


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
    # (evaluations x 100 rows, z dimensions): one column per q(z|.) row, as the original
    return kl_heatmap_figure(kl.reshape(-1, kl.shape[-1]), args.label, seed)


def _kl_z_mean(args):
    z_stats = runfile.read_arrays(args.run_file, "z_stats")
    seed = runfile.read_attrs(args.run_file)["seed"]
    return kl_mean_heatmap_figure(z_stats["epoch"], z_stats["kl_per_dim_mean"], args.label, seed)


# Figure name -> (the options it needs, how to draw it).
FIGURES = {
    "accuracy": (("metrics",), _accuracy),
    "accuracy-loss": (("metrics",), _accuracy_loss),
    "active-dims": (("metrics", "threshold"), _active_dims),
    "samples": (("run_file", "label"), _samples),
    "kl-z": (("run_file", "label"), _kl_z),
    "kl-z-mean": (("run_file", "label"), _kl_z_mean),
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def main(argv: list[str] | None = None) -> None:
    needed = "\n".join(
        f"  {figure:<14} {' '.join(map(_option, needs))}" for figure, (needs, _) in FIGURES.items()
    )
    parser = entry_point_parser(
        "ssvae-plot",
        "Render a figure from the aggregated metrics or from one run's file.",
        epilog=f"each figure needs, besides --out:\n{needed}\n(accuracy-loss also takes --split)",
    )
    parser.add_argument("figure", choices=list(FIGURES), help="the figure to draw")
    parser.add_argument("--metrics", type=Path, help="aggregated metrics .h5 (comparison figures)")
    parser.add_argument(
        "--split", choices=["train", "valid"], default="valid", help="accuracy-loss: the split"
    )
    parser.add_argument(
        "--threshold", type=float, help="KL in nats above which a z dimension counts as active"
    )
    parser.add_argument("--run-file", type=Path, help="one run's metrics .h5 (single-run figures)")
    parser.add_argument("--label", help="the run's label in titles (single-run figures)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    needs, draw = FIGURES[args.figure]
    missing = [name for name in needs if getattr(args, name) is None]
    if missing:
        parser.error(f"figure {args.figure} needs {_option(missing[0])}")
    if args.threshold is not None and args.threshold < 0:
        parser.error(f"--threshold must be at least 0, not {args.threshold}")
    with exit_on_user_error("ssvae-plot"):
        save(draw(args), args.out)
    print(f"wrote {args.out}")
