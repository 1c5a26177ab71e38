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

from ssvae import metrics  # noqa: E402
from ssvae.io import atomic_output  # noqa: E402

STYLE = "seaborn-v0_8-darkgrid"  # the original used seaborn's darkgrid at 72 dpi
DPI = 72


def run_colours(n: int) -> list[tuple]:
    """seaborn's "hls" palette: n evenly spaced hues at lightness 0.6, saturation 0.65."""
    hues = (np.linspace(0, 1, n + 1)[:-1] + 0.01) % 1
    return [colorsys.hls_to_rgb(h, 0.6, 0.65) for h in hues]


def multi_seed_accuracy(metrics_path: Path, out_path: Path) -> None:
    """Mean over seeds of validation accuracy per run, a band of one standard deviation, and a
    legend "{best:.3f} ({epochs}ep) {label}" sorted best first (spec 5.1)."""
    table = metrics.read_table(metrics_path)
    runs = metrics.read_runs(metrics_path).sort_values("order")
    colours = run_colours(len(runs))
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 6), dpi=DPI)
        entries = []
        n_seeds = set()
        for run, colour in zip(runs.itertuples(), colours, strict=True):
            curves = metrics.seed_curves(table, run.run, "valid", "accuracy")
            if curves.empty:
                continue
            n_seeds.add(curves.shape[1])
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1)
            label = f"{mean.max():.3f} ({curves.index.max()}ep) {run.label}"
            (line,) = ax.plot(mean.index, mean.to_numpy(), color=colour, label=label)
            if curves.shape[1] > 1:
                ax.fill_between(mean.index, mean - std, mean + std, color=colour, alpha=0.12, lw=0)
            entries.append((mean.max(), line))
        entries.sort(key=lambda entry: -entry[0])
        ax.legend(handles=[line for _, line in entries], loc="lower right", fontsize=10)
        ax.set_title("valid accuracy")
        ax.set_xlabel("epochs")
        # The original's axis starts at 0.5; runs that never reach it (smoke runs) need the rest.
        ax.set_ylim(0.5 if entries and entries[-1][0] > 0.5 else 0.0, 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        seeds = "/".join(str(n) for n in sorted(n_seeds)) or "0"
        fig.text(
            0.01,
            0.01,
            f"line: mean over {seeds} seeds; band: mean ± 1 std across seeds; legend: best epoch "
            "of the mean curve (the original's statistic, reconstructed)",
            fontsize=8,
            color="0.3",
        )
        fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.14)
        with atomic_output(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ssvae-plot", description="Render the multi-seed validation-accuracy figure."
    )
    parser.add_argument("--metrics", type=Path, required=True, help="aggregated metrics .h5")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        multi_seed_accuracy(args.metrics, args.out)
    except (OSError, KeyError) as err:
        sys.exit(f"ssvae-plot: error: {err}")
    print(f"wrote {args.out}")
