"""The results report: one row per run (as Markdown and as CSV) and every figure, embedded by a
path relative to the report so that it reads on a code host. Drawn from the aggregated metrics
file alone (no training code is imported)."""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ssvae import metrics
from ssvae.cli import entry_point_parser
from ssvae.config import config_value
from ssvae.errors import InputError, exit_on_user_error
from ssvae.figures import FIGURES, figure_of
from ssvae.io import write_atomic
from ssvae.splits import N_CLASSES, ORIGINAL_LABELS_PER_CLASS


def read_reference(path: Path) -> pd.DataFrame:
    """The original's 10-seed validation accuracy per run label (docs/original.md, section 8)."""
    try:
        reference = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot be read as CSV ({err})") from None
    missing = {"label", "valid_accuracy"} - set(reference.columns)
    if missing:
        raise InputError(f"{path}: no column {sorted(missing)[0]!r}")
    return reference[["label", "valid_accuracy"]].rename(
        columns={"valid_accuracy": "original_valid_accuracy"}
    )


COMPUTATION_COLUMNS = ["device", "torch_version", "cuda_version", "step"]


def computation_table(seeds: pd.DataFrame, labels: pd.Series) -> list[str]:
    """How each run's seeds were computed: device, torch and CUDA versions, and how the training
    step ran; one row per run and distinct combination, with its number of run files."""
    lines = [
        "| run | device | torch | CUDA | training step | run files |",
        "|---|---|---|---|---|---:|",
    ]
    groups = seeds.groupby(["run", *COMPUTATION_COLUMNS], sort=False).size()
    for (run, *computation), n in groups.items():
        lines.append(_row([labels.get(run, run), *computation, n]))
    return lines


def results_table(metrics_path: Path, reference_path: Path, threshold: float) -> pd.DataFrame:
    """Per run: the aggregated summary, the original's number and the difference to it, and the
    active z dimensions at the last validation (mean and std over seeds)."""
    summary = metrics.summarize(
        metrics.read_table(metrics_path),
        metrics.read_runs(metrics_path).sort_values("order"),
        metrics.read_seeds(metrics_path),
        metrics.read_reference_run(metrics_path),
    )
    labels_per_class = metrics.read_labels_per_class(metrics_path)
    summary.insert(3, "labels_per_class", labels_per_class)
    active = metrics.active_dims(metrics_path, threshold)
    last = active[active.epoch == active.groupby("run").epoch.transform("max")]
    active_last = last.groupby("run").value.agg(
        active_dims_last_mean="mean", active_dims_last_std=lambda v: v.std(ddof=1)
    )
    reference = read_reference(reference_path)
    if labels_per_class != ORIGINAL_LABELS_PER_CLASS:
        reference = reference.iloc[:0]  # the original's numbers are for its 100 labels
    table = summary.merge(reference, on="label", how="left")
    table = table.merge(active_last, left_on="run", right_index=True, how="left")
    table["difference"] = table.valid_accuracy_best_mean - table.original_valid_accuracy
    return table


def _mean_std(mean: float, std: float, digits: int = 3) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _interval(row, column: str, signed: bool = False) -> str:
    """ "mean [low, high]" of a summary column group; the mean alone without an interval."""
    mean = getattr(row, f"{column}_mean", np.nan)
    low, high = getattr(row, f"{column}_ci_low", np.nan), getattr(row, f"{column}_ci_high", np.nan)
    if pd.isna(mean):
        return "–"
    number = "{:+.3f}" if signed else "{:.3f}"
    if pd.isna(low):
        return number.format(mean)
    return f"{number.format(mean)} [{number.format(low)}, {number.format(high)}]"


def _duration(seconds: float) -> str:
    if pd.isna(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _signed(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:+.3f}"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def accuracy_table(table: pd.DataFrame) -> list[str]:
    lines = [
        "| run | valid accuracy, last epoch | test accuracy | valid accuracy, best epoch of "
        "the mean (optimistic) | original | difference | seeds complete | active z dims, last |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in table.itertuples():
        best = _interval(row, "valid_accuracy_best")
        original = row.original_valid_accuracy
        cells = [
            row.label,
            _interval(row, "valid_accuracy_last"),
            _interval(row, "test_accuracy"),
            f"{best} at epoch {int(row.best_epoch)}" if best != "–" else best,
            "–" if pd.isna(original) else f"{original:.3f}",
            _signed(row.difference),
            f"{row.seeds_complete}/{row.seeds_configured}",
            _mean_std(row.active_dims_last_mean, row.active_dims_last_std, digits=1),
        ]
        lines.append(_row(cells))
    return lines


def _ahead(row, column: str) -> str:
    share = getattr(row, f"{column}_ahead_share", np.nan)
    if pd.isna(share):
        return "–"
    n = int(getattr(row, f"{column}_paired_seeds"))
    return f"{round(share * n)} of {n}"


def paired_table(table: pd.DataFrame, reference_label: str) -> list[str]:
    lines = [
        f"| run | valid accuracy, last epoch: difference to {reference_label} | seeds ahead "
        f"| test accuracy: difference to {reference_label} | seeds ahead |",
        "|---|---|---:|---|---:|",
    ]
    for row in table.itertuples():
        if row.run == row.reference_run:
            lines.append(_row([row.label, "(the reference)", "", "", ""]))
            continue
        cells = [row.label]
        for column in ("valid_accuracy_last", "test_accuracy"):
            cells += [_interval(row, f"{column}_diff", signed=True), _ahead(row, column)]
        lines.append(_row(cells))
    return lines


def cost_table(table: pd.DataFrame) -> list[str]:
    lines = [
        "| run | job time per seed | job time, all seeds | peak memory | training wall time "
        "per job |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in table.itertuples():
        memory = row.peak_memory_mb_max
        cells = [
            row.label,
            _duration(row.job_seconds_mean),
            _duration(row.job_seconds_total),
            "–" if pd.isna(memory) else f"{memory:,.0f} MB",
            _duration(row.wall_seconds_mean),
        ]
        lines.append(_row(cells))
    return lines


def ranking_lines(table: pd.DataFrame) -> list[str]:
    """Whether the runs that have an original number keep the original's order."""
    compared = table.dropna(subset=["original_valid_accuracy", "valid_accuracy_best_mean"])
    if len(compared) < 2:
        return []
    ours = compared.sort_values("valid_accuracy_best_mean", ascending=False).label.tolist()
    original = compared.sort_values("original_valid_accuracy", ascending=False).label.tolist()
    within = (compared.difference.abs() <= 0.01).sum()
    verdict = "the same as" if ours == original else "different from"
    return [
        f"Order by best-epoch validation accuracy: {' > '.join(ours)}; "
        f"{verdict} the original's ({' > '.join(original)}).",
        f"Runs within ±0.01 of the original: {within} of {len(compared)}.",
    ]


def render_markdown(
    table: pd.DataFrame,
    seeds: pd.DataFrame,
    figure_paths: list[Path],
    report_dir: Path,
    threshold: float,
) -> str:
    n_configured = int(table.seeds_configured.max())
    epochs = int(table.last_epoch.max())
    if n_configured > 1:
        cells = (
            "Accuracy cells are the mean over seeds with a t-based 95% confidence interval of "
            "that mean, [low, high] (Student's t, n - 1 degrees of freedom), clipped to what is "
            "possible: [0, 1] for an accuracy, [-1, 1] for a difference of two"
        )
    else:
        cells = "Accuracy cells are the one seed's values: an interval needs two seeds or more"
    labels_per_class = int(table.labels_per_class.iloc[0])
    lines = [
        "# Results: semi-supervised VAEs on MNIST with "
        f"{N_CLASSES * labels_per_class:,} labels ({labels_per_class} a class)",
        "",
        f"{len(table)} runs, {n_configured} seed{'s' * (n_configured > 1)} each, epochs 0 to "
        f"{epochs}. {cells}; standard deviations are in report.csv.",
        "",
    ]
    if labels_per_class != ORIGINAL_LABELS_PER_CLASS:
        lines += [
            f"**The original's numbers are for {N_CLASSES * ORIGINAL_LABELS_PER_CLASS} labels, "
            f"not {N_CLASSES * labels_per_class:,}: "
            "the original and difference columns are empty.**",
            "",
        ]
    if epochs != 300:
        lines += [
            f"**These runs trained for {epochs} epochs, the original for 300: the difference "
            "column is no reproduction check.**",
            "",
        ]
    lines += accuracy_table(table) + [""]
    lines += [line for text in ranking_lines(table) for line in (text, "")]
    lines += [
        "Definitions:",
        "- *last epoch* and *test*: validation accuracy after the last epoch, and accuracy on the "
        "10,000 MNIST test images after it; neither is chosen by looking at the results;",
        f"- *best epoch of the mean*: the epoch at which the seed-mean validation accuracy curve "
        f"peaks (the original's legend statistic). It is optimistic: a maximum over "
        f"{int(table.validations.max())} validations, chosen on the very images it is reported "
        "for;",
        "- *original*: the original vae_ssl's 10-seed value of that statistic after 300 epochs; "
        "*difference*: ours minus the original;",
        f"- *active z dims*: of 50, those whose KL, averaged over the validation set, exceeds "
        f"{threshold:g} nats at the last validation (mean ± standard deviation over seeds).",
        "",
    ]
    lines += paired_section(table)
    lines += ["## Cost", ""]
    lines += cost_table(table) + [""]
    lines += [
        "*Job time* and *peak memory*: what each training job recorded in its run files (its "
        "wall time and the peak resident memory of its own process, not of processes it "
        "started); a job that trained several seeds together counts an equal share of its "
        "time to each, and a job resumed after an interruption counts its last attempt only. "
        "*Training wall time*: from the start of training to the run file (data loading, "
        "training, every validation and the test), summed over every attempt, as the run file "
        "records it; seeds trained together share theirs.",
        "",
    ]
    lines += ["## How the runs were computed", ""]
    lines += computation_table(seeds, table.set_index("run").label) + [""]
    lines += figure_sections(figure_paths, report_dir)
    return "\n".join(lines)


def paired_section(table: pd.DataFrame) -> list[str]:
    """Each run against the reference run, seed by seed (nothing without a reference run)."""
    references = table.reference_run.dropna() if "reference_run" in table else pd.Series()
    if not len(references):
        return []
    reference_label = table.set_index("run").label[references.iloc[0]]
    lines = [f"## Paired with {reference_label}", ""]
    lines += [
        f"Every seed draws one labeled split that all runs share, so each run is compared "
        f"with {reference_label} seed by seed: the mean of its per-seed differences with a "
        "t-based 95% confidence interval, and on how many seeds it is strictly ahead. An "
        "interval that excludes 0 says the runs differ beyond seed-to-seed noise, each "
        "interval on its own: they are not adjusted for comparing many runs at once.",
        "",
    ]
    return lines + paired_table(table, reference_label) + [""]


def figure_sections(figure_paths: list[Path], report_dir: Path) -> list[str]:
    """The figures, in the order of the figure table, each with its title and caption."""
    by_figure = {}
    for path in figure_paths:
        try:
            figure = figure_of(path.name)
        except ValueError as err:
            raise InputError(str(err)) from None
        by_figure.setdefault(figure, []).append(path)
    lines = []
    for figure in FIGURES:
        if figure not in by_figure:
            continue
        lines += [f"## {figure.title}", "", figure.caption, ""]
        for path in by_figure[figure]:
            relative = Path(os.path.relpath(path, report_dir)).as_posix()
            lines += [f"![{path.stem}]({relative})", ""]
    return lines


def write_report(
    metrics_path: Path,
    reference_path: Path,
    figures: list[Path],
    threshold: float,
    out_md: Path,
    out_csv: Path,
) -> None:
    table = results_table(metrics_path, reference_path, threshold)
    seeds = metrics.read_seeds(metrics_path)
    markdown = render_markdown(table, seeds, figures, out_md.parent, threshold)
    write_atomic(out_csv, table.to_csv(index=False, float_format="%.6g").encode())
    write_atomic(out_md, (markdown + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser(
        "ssvae-report", "Write the results report (Markdown and CSV) from the aggregated metrics."
    )
    parser.add_argument("--metrics", type=Path, required=True, help="aggregated metrics .h5")
    parser.add_argument(
        "--reference", type=Path, required=True, help="CSV of the original's numbers per label"
    )
    parser.add_argument("--figures", type=Path, nargs="*", default=[], help="PNGs to embed")
    parser.add_argument(
        "--threshold",
        type=config_value("active_kl_threshold"),
        required=True,
        help="KL in nats above which a z dimension counts as active",
    )
    parser.add_argument("--out-md", type=Path, required=True, help="Markdown report to write")
    parser.add_argument("--out-csv", type=Path, required=True, help="the report's table as CSV")
    args = parser.parse_args(argv)
    with exit_on_user_error("ssvae-report"):
        write_report(
            args.metrics, args.reference, args.figures, args.threshold, args.out_md, args.out_csv
        )
    print(f"wrote {args.out_md} and {args.out_csv}")


if __name__ == "__main__":
    main()
