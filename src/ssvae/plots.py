"""Figures, drawn from the aggregated metrics file alone (no training code is imported)."""

import argparse
import colorsys
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssvae import metrics, runfile  # noqa: E402
from ssvae.io import atomic_output  # noqa: E402

STYLE = "seaborn-v0_8-darkgrid"  # the original used seaborn's darkgrid at 72 dpi
DPI = 72


def run_colours(n: int) -> list[tuple]:
    """seaborn's "hls" palette: n evenly spaced hues at lightness 0.6, saturation 0.65."""
    hues = (np.linspace(0, 1, n + 1)[:-1] + 0.01) % 1
    return [colorsys.hls_to_rgb(h, 0.6, 0.65) for h in hues]


def draw_seed_means(ax, table, runs, split: str, metric: str, higher_is_better: bool) -> set:
    """One line per run, the mean over seeds, with a band of one standard deviation; legend
    entries "{best} ({epochs}ep) {label}" sorted best first (spec 5.1, 5.2). Returns the numbers
    of seeds seen."""
    best = max if higher_is_better else min
    digits = 3 if metric == "accuracy" else 1
    entries, n_seeds = [], set()
    for run, colour in zip(runs.itertuples(), run_colours(len(runs)), strict=True):
        curves = metrics.seed_curves(table, run.run, split, metric)
        if curves.empty:
            continue
        n_seeds.add(curves.shape[1])
        mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1)
        value = best(mean)
        label = f"{value:.{digits}f} ({curves.index.max()}ep) {run.label}"
        (line,) = ax.plot(mean.index, mean.to_numpy(), color=colour, label=label)
        if curves.shape[1] > 1:
            ax.fill_between(mean.index, mean - std, mean + std, color=colour, alpha=0.12, lw=0)
        entries.append((value, line))
    entries.sort(key=lambda entry: -entry[0] if higher_is_better else entry[0])
    location = "lower right" if higher_is_better else "upper left"
    ax.legend(handles=[line for _, line in entries], loc=location, fontsize=10)
    ax.set_title(f"{split} {metric}")
    ax.set_xlabel("epochs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric == "accuracy":
        # The original's axis starts at 0.5; runs that never reach it (smoke runs) need the rest.
        ax.set_ylim(0.5 if entries and min(v for v, _ in entries) > 0.5 else 0.0, 1.0)
    elif any(100 <= v <= 1000 for v, _ in entries):
        ax.set_ylim(100, 1000)  # the original's loss axis; validation spikes fill the panel
    return n_seeds


def _caption_seed_means(fig, n_seeds: set) -> None:
    seeds = "/".join(str(n) for n in sorted(n_seeds)) or "0"
    fig.text(
        0.01,
        0.01,
        f"line: mean over seeds ({seeds} per run); band: ± 1 std across seeds; legend: best epoch "
        "of the mean curve (the original's statistic, reconstructed)",
        fontsize=8,
        color="0.3",
    )


def _save(fig, out_path: Path) -> None:
    with atomic_output(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def multi_seed_accuracy(metrics_path: Path, out_path: Path) -> None:
    """Validation accuracy of every run over epochs (spec 5.1), 648 x 432 px."""
    table = metrics.read_table(metrics_path)
    runs = metrics.read_runs(metrics_path).sort_values("order")
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 6), dpi=DPI)
        n_seeds = draw_seed_means(ax, table, runs, "valid", "accuracy", higher_is_better=True)
        fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.14)
        _caption_seed_means(fig, n_seeds)
        _save(fig, out_path)


def multi_seed_accuracy_loss(metrics_path: Path, split: str, out_path: Path) -> None:
    """Accuracy and loss of every run over epochs on one split (spec 5.2), 1296 x 432 px."""
    table = metrics.read_table(metrics_path)
    runs = metrics.read_runs(metrics_path).sort_values("order")
    with plt.style.context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(18, 6), dpi=DPI)
        n_seeds = draw_seed_means(left, table, runs, split, "accuracy", higher_is_better=True)
        draw_seed_means(right, table, runs, split, "loss", higher_is_better=False)
        fig.subplots_adjust(left=0.04, right=0.99, top=0.93, bottom=0.14, wspace=0.12)
        _caption_seed_means(fig, n_seeds)
        _save(fig, out_path)


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


def samples_figure(run_path: Path, label: str, out_path: Path) -> None:
    """The decoder's Bernoulli means at the last evaluation of one run (spec 5.3), 1152 px."""
    samples = runfile.read_arrays(run_path, "samples")
    seed = runfile.read_attrs(run_path)["seed"]
    fig = plt.figure(figsize=(16, 16), dpi=DPI)
    ax = fig.add_axes((0.02, 0.01, 0.96, 0.93))
    ax.imshow(sample_grid(samples["p(x)"][-1]), cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title(f"{label} seed={seed}\np(x)  (epoch {samples['epoch'][-1]})", fontsize=16)
    _save(fig, out_path)


def kl_per_dimension(mu: np.ndarray, logcov2: np.ndarray) -> np.ndarray:
    return 0.5 * (np.exp(logcov2) + mu**2 - 1.0 - logcov2)


def kl_heatmap_figure(run_path: Path, label: str, out_path: Path) -> None:
    """KL of each z dimension for the last 100 q(z|.) rows of every validation (spec 5.4)."""
    z_stats = runfile.read_arrays(run_path, "z_stats")
    seed = runfile.read_attrs(run_path)["seed"]
    kl = kl_per_dimension(z_stats["mu_last_batch"], z_stats["logcov2_last_batch"])
    kl = kl.reshape(-1, kl.shape[-1])  # (evaluations x 100 rows, z dimensions)
    fig, ax = plt.subplots(figsize=(18, 5), dpi=DPI)
    ax.pcolormesh(kl.T, cmap="jet")
    ax.set_xlim(0, kl.shape[0])
    ax.set_ylim(0, kl.shape[1])
    ax.set_xlabel("examples ordered by iteration #")
    ax.set_ylabel("Z index")
    ax.set_title(f"({label} seed={seed}, valid, p(x), KL)")
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=0.15)
    _save(fig, out_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ssvae-plot",
        description="Render a figure from the aggregated metrics or from one run's file.",
    )
    parser.add_argument("figure", choices=["accuracy", "accuracy-loss", "samples", "kl-z"])
    parser.add_argument("--metrics", type=Path, help="aggregated metrics .h5 (accuracy figures)")
    parser.add_argument("--split", choices=["train", "valid"], default="valid")
    parser.add_argument("--run-file", type=Path, help="one run's metrics .h5 (samples, kl-z)")
    parser.add_argument("--label", help="the run's label in titles (samples, kl-z)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    needs = ["metrics"] if args.figure.startswith("accuracy") else ["run_file", "label"]
    missing = [name for name in needs if getattr(args, name) is None]
    if missing:
        parser.error(f"figure {args.figure} needs --{missing[0].replace('_', '-')}")
    try:
        if args.figure == "accuracy":
            multi_seed_accuracy(args.metrics, args.out)
        elif args.figure == "accuracy-loss":
            multi_seed_accuracy_loss(args.metrics, args.split, args.out)
        elif args.figure == "samples":
            samples_figure(args.run_file, args.label, args.out)
        else:
            kl_heatmap_figure(args.run_file, args.label, args.out)
    except (OSError, KeyError) as err:
        sys.exit(f"ssvae-plot: error: {err}")
    print(f"wrote {args.out}")
