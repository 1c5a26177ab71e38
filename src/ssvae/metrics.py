"""Aggregate every run's history into one tidy table, and summarise it per run.

The aggregated HDF5 file holds four tables, each a group with one dataset per column:

    /table   run, seed, split, epoch, metric, value   (one row per logged value)
    /runs    run, label, model, order, palette_index, seeds_configured
                                      (the runs the config names, in its order)
    /seeds   run, seed, status, device, torch_version, cuda_version, step, wall_seconds,
             job_seconds, peak_memory_mb
                                      (one row per run file; step: how the training step ran;
                                      wall_seconds: the run file's, over every attempt;
                                      job_seconds: the seed's share of the time of the job that
                                      wrote it (a job of n seeds, 1/n each); peak_memory_mb:
                                      that job's peak resident memory; NaN when not recorded)
    /z_kl    run, seed, epoch, kl                     (kl: (rows, z dimensions), the KL of each
                                      z dimension averaged over the validation set)

`read_table`, `read_runs`, `read_seeds` and `read_z_kl` return them as pandas DataFrames
(`read_z_kl` also returns the KL array). The file's attribute `reference_run` names the run the
summary's paired differences are to ("" when none).
"""

import io
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import stats

from ssvae import runfile
from ssvae.cli import entry_point_parser
from ssvae.errors import InputError, exit_on_user_error
from ssvae.io import read_hdf5, write_atomic
from ssvae.splits import ORIGINAL_LABELS_PER_CLASS

TABLE_COLUMNS = ("run", "seed", "split", "epoch", "metric", "value")
RUN_COLUMNS = ("run", "label", "model", "order", "palette_index", "seeds_configured")
SEED_COLUMNS = (
    "run",
    "seed",
    "status",
    "device",
    "torch_version",
    "cuda_version",
    "step",
    "wall_seconds",
    "job_seconds",
    "peak_memory_mb",
)
Z_KL_COLUMNS = ("run", "seed", "epoch")


def tidy_history(path: Path) -> pd.DataFrame:
    """One run file as rows of (run, seed, split, epoch, metric, value)."""
    attrs = runfile.read_attrs(path)
    history = runfile.read_history(path)
    missing = [split for split in runfile.SPLITS if split not in history]
    if attrs.get("status") != "complete" or missing:
        what = f"no {missing[0]} group" if missing else f"status {attrs.get('status')!r}"
        raise InputError(f"{path}: {what}; not a complete run file")
    frames = []
    for split, metrics in history.items():
        epochs = metrics.pop("epoch")
        for metric, values in metrics.items():
            frames.append(
                pd.DataFrame({"split": split, "epoch": epochs, "metric": metric, "value": values})
            )
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "seed", int(attrs["seed"]))
    table.insert(0, "run", str(attrs["run"]))
    return table[list(TABLE_COLUMNS)]


def _write_frame(group: h5py.Group, frame: pd.DataFrame) -> None:
    for column in frame.columns:
        values = frame[column].to_numpy()
        if values.dtype == object:
            group.create_dataset(
                column, data=values.astype(str).tolist(), dtype=h5py.string_dtype()
            )
        else:
            group.create_dataset(column, data=values)


def _read_frame(group: h5py.Group, columns) -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: group[c].asstr()[()] if h5py.check_string_dtype(group[c].dtype) else group[c][()]
            for c in columns
        }
    )


def read_table(path: Path) -> pd.DataFrame:
    with read_hdf5(path) as f:
        return _read_frame(f["table"], TABLE_COLUMNS)


def read_runs(path: Path) -> pd.DataFrame:
    with read_hdf5(path) as f:
        return _read_frame(f["runs"], RUN_COLUMNS)


def read_reference_run(path: Path) -> str | None:
    """The run the paired differences are to; None when it was not among the compared runs."""
    with read_hdf5(path) as f:
        return str(f.attrs.get("reference_run", "")) or None


def read_labels_per_class(path: Path) -> int:
    """The labeled images per class of every run the table holds."""
    with read_hdf5(path) as f:
        return int(f.attrs.get("labels_per_class", ORIGINAL_LABELS_PER_CLASS))


def read_seeds(path: Path) -> pd.DataFrame:
    with read_hdf5(path) as f:
        return _read_frame(f["seeds"], SEED_COLUMNS)


def read_z_kl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(run, seed, epoch) rows and the matching (rows, z dimensions) validation-mean KL."""
    with read_hdf5(path) as f:
        return _read_frame(f["z_kl"], Z_KL_COLUMNS), f["z_kl/kl"][()]


def active_dims(path: Path, threshold: float) -> pd.DataFrame:
    """Tidy rows (split "valid", metric "active_dims") counting, per run, seed and validation,
    the z dimensions whose validation-mean KL exceeds `threshold` nats."""
    rows, kl = read_z_kl(path)
    return rows.assign(split="valid", metric="active_dims", value=(kl > threshold).sum(axis=1))[
        list(TABLE_COLUMNS)
    ]


def seed_curves(table: pd.DataFrame, run: str, split: str, metric: str) -> pd.DataFrame:
    """Values of one metric as an epochs x seeds frame."""
    rows = table[(table.run == run) & (table.split == split) & (table.metric == metric)]
    return rows.pivot(index="epoch", columns="seed", values="value").sort_index()


CONFIDENCE = 0.95
ACCURACY_RANGE = (0.0, 1.0)
DIFFERENCE_RANGE = (-1.0, 1.0)  # of two accuracies


def mean_interval(values: pd.Series, possible: tuple[float, float] = ACCURACY_RANGE) -> dict:
    """Mean, sample standard deviation and the t-based 95% confidence interval of the mean over
    seeds (Student's t with n - 1 degrees of freedom: seeds are few, and independent), clipped
    to the `possible` range of the values: with few seeds the t interval reaches past what an
    accuracy can be. No interval from one seed."""
    values = values.dropna()
    n = len(values)
    mean, std = values.mean(), values.std(ddof=1)
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * std / math.sqrt(n) if n > 1 else np.nan
    low, high = possible
    return {
        "mean": mean,
        "std": std,
        "ci_low": max(mean - half, low) if n > 1 else np.nan,
        "ci_high": min(mean + half, high) if n > 1 else np.nan,
    }


def paired_difference(values: pd.Series, reference: pd.Series) -> dict[str, float]:
    """A run's per-seed values minus the reference run's on the same seeds (the seed fixes the
    labeled split, so each pair shares its data): the mean difference with its t-based 95%
    interval, the share of those seeds on which the run is strictly ahead, and how many."""
    differences = (values - reference).dropna()  # aligned by seed; seeds both runs have
    paired = differences.index
    interval = mean_interval(differences, DIFFERENCE_RANGE)
    return {
        "diff_mean": interval["mean"],
        "diff_ci_low": interval["ci_low"],
        "diff_ci_high": interval["ci_high"],
        "ahead_share": (differences > 0).mean() if len(paired) else np.nan,
        "paired_seeds": len(paired),
    }


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{name}": value for name, value in values.items()}


def per_seed_accuracies(table: pd.DataFrame, run: str) -> dict[str, pd.Series]:
    """Per seed: validation accuracy at the last epoch and test accuracy (after the last epoch),
    the values that are not chosen by looking at them."""
    valid = seed_curves(table, run, "valid", "accuracy")
    test = seed_curves(table, run, "test", "accuracy")
    found = {}
    if not valid.empty:
        found["valid_accuracy_last"] = valid.loc[valid.index.max()]
    if not test.empty:
        found["test_accuracy"] = test.iloc[-1]
    return found


def summarize(table: pd.DataFrame, runs: pd.DataFrame, seeds: pd.DataFrame,
              reference_run: str | None = None) -> pd.DataFrame:  # fmt: skip
    """Per run: validation accuracy over seeds at the best epoch of the mean curve (optimistic:
    the epoch is chosen on these values) and at the last epoch, and test accuracy, each with its
    mean, standard deviation and 95% interval over seeds; each run's paired difference to
    `reference_run` on the last-epoch and test accuracies; seeds present and complete, and
    wall time per seed and in total."""
    reference = per_seed_accuracies(table, reference_run) if reference_run else {}
    rows = []
    for run in runs.itertuples():
        valid = seed_curves(table, run.run, "valid", "accuracy")
        row = {"run": run.run, "label": run.label, "model": run.model, "n_seeds": valid.shape[1]}
        run_seeds = seeds[seeds.run == run.run]
        row |= {
            "seeds_configured": run.seeds_configured,
            "seeds_complete": int((run_seeds.status == "complete").sum()),
            "wall_seconds_mean": run_seeds.wall_seconds.mean(),
            "wall_seconds_total": run_seeds.wall_seconds.sum(),
            "job_seconds_mean": run_seeds.job_seconds.mean(),
            "job_seconds_total": run_seeds.job_seconds.sum(min_count=1),
            "peak_memory_mb_max": run_seeds.peak_memory_mb.max(),
        }
        if not valid.empty:
            best_epoch = int(valid.mean(axis=1).idxmax())
            row |= {
                "best_epoch": best_epoch,
                "last_epoch": int(valid.index.max()),
                "validations": len(valid.index),
            }
            row |= _prefixed("valid_accuracy_best", mean_interval(valid.loc[best_epoch]))
        accuracies = per_seed_accuracies(table, run.run)
        for name, values in accuracies.items():
            row |= _prefixed(name, mean_interval(values))
        if reference:
            row["reference_run"] = reference_run
            for name, values in accuracies.items():
                # The reference run's own differences would be zeros that say nothing.
                if name in reference and run.run != reference_run:
                    row |= _prefixed(name, paired_difference(values, reference[name]))
        rows.append(row)
    return pd.DataFrame(rows)


def seed_record(path: Path) -> dict:
    attrs = runfile.read_attrs(path)
    seeds_in_job = len(attrs.get("seeds_in_job", [attrs["seed"]]))
    return {
        "run": str(attrs["run"]),
        "seed": int(attrs["seed"]),
        "status": str(attrs["status"]),
        "device": str(attrs["device"]),
        "torch_version": str(attrs["torch_version"]),
        "cuda_version": str(attrs.get("cuda_version", "not recorded")),
        "step": runfile.how_the_step_ran(attrs),
        "wall_seconds": float(attrs["wall_seconds"]),
        "job_seconds": float(attrs.get("job_seconds", np.nan)) / seeds_in_job,
        "peak_memory_mb": float(attrs.get("peak_memory_mb", np.nan)),
    }


def z_kl_rows(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The validation-mean KL per z dimension of one run file (no rows for runs without z)."""
    attrs = runfile.read_attrs(path)
    z_stats = runfile.read_arrays(path, "z_stats") if runfile.has_group(path, "z_stats") else {}
    epochs = z_stats.get("epoch", np.zeros(0, dtype=np.int64))
    kl = z_stats.get("kl_per_dim_mean", np.zeros((0, 0)))
    rows = pd.DataFrame({"run": str(attrs["run"]), "seed": int(attrs["seed"]), "epoch": epochs})
    return rows, kl


def aggregate(run_files: list[Path], runs: dict[str, dict], out_h5: Path, out_csv: Path,
              reference_run: str | None = None,
              labels_per_class: int = ORIGINAL_LABELS_PER_CLASS) -> None:  # fmt: skip
    """`runs` maps run id to {"label", "model", "palette_index", "seeds"}, in the order figures
    should use; `palette_index` keeps a run's colour when the comparison changes. Paired
    differences are to `reference_run`, when it is one of `runs`. Every run file is of runs
    with `labels_per_class` labeled images a class, which the table and summary record."""
    if reference_run is not None and reference_run not in runs:
        reference_run = None  # not compared this time: no pairs to form
    table = pd.concat([tidy_history(path) for path in run_files], ignore_index=True)
    unknown = sorted(set(table.run) - set(runs))
    if unknown:
        raise InputError(f"run file of run {unknown[0]!r}, which the run list does not name")
    run_frame = pd.DataFrame(
        [
            {
                "run": run,
                "label": info["label"],
                "model": info["model"],
                "order": i,
                "palette_index": info["palette_index"],
                "seeds_configured": len(info["seeds"]),
            }
            for i, (run, info) in enumerate(runs.items())
        ]
    )
    seed_frame = pd.DataFrame([seed_record(path) for path in run_files], columns=SEED_COLUMNS)
    twice = seed_frame.duplicated(["run", "seed"])
    if twice.any():
        first = seed_frame[twice].iloc[0]
        raise InputError(
            f"{run_files[int(twice.to_numpy().argmax())]}: run {first.run} seed {first.seed} is "
            "given twice"
        )
    summary = summarize(table, run_frame, seed_frame, reference_run)
    summary.insert(3, "labels_per_class", labels_per_class)
    z_kl = [z_kl_rows(path) for path in run_files]
    z_kl_with_rows = [kl for rows, kl in z_kl if len(rows)]
    aggregated = io.BytesIO()
    with h5py.File(aggregated, "w") as f:
        f.attrs["reference_run"] = reference_run or ""
        f.attrs["labels_per_class"] = labels_per_class
        _write_frame(f.create_group("table"), table)
        _write_frame(f.create_group("runs"), run_frame)
        _write_frame(f.create_group("seeds"), seed_frame)
        z_kl_group = f.create_group("z_kl")
        _write_frame(z_kl_group, pd.concat([rows for rows, _ in z_kl], ignore_index=True))
        z_kl_group.create_dataset(
            "kl", data=np.concatenate(z_kl_with_rows) if z_kl_with_rows else np.zeros((0, 0))
        )
    write_atomic(out_h5, aggregated.getvalue())
    write_atomic(out_csv, summary.to_csv(index=False, float_format="%.6g").encode())


def main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser(
        "ssvae-metrics", "Aggregate run files into a tidy HDF5 table and a per-run CSV summary."
    )
    parser.add_argument("run_files", nargs="+", type=Path, help="complete run files (.h5)")
    parser.add_argument(
        "--runs",
        required=True,
        help='JSON object {run: {"label", "model", "palette_index", "seeds"}}, in order',
    )
    parser.add_argument(
        "--reference-run",
        help="the run each run is compared with seed by seed (paired differences)",
    )
    parser.add_argument(
        "--labels-per-class",
        type=int,
        default=ORIGINAL_LABELS_PER_CLASS,
        help="the labeled images a class of the runs' splits",
    )
    parser.add_argument("--out-h5", type=Path, required=True, help="aggregated .h5 to write")
    parser.add_argument("--out-csv", type=Path, required=True, help="summary CSV to write")
    args = parser.parse_args(argv)
    with exit_on_user_error("ssvae-metrics"):
        try:
            runs = json.loads(args.runs)
        except json.JSONDecodeError as err:
            raise InputError(f"--runs is not valid JSON ({err})") from None
        aggregate(args.run_files, runs, args.out_h5, args.out_csv, args.reference_run,
                  args.labels_per_class)  # fmt: skip
    print(f"wrote {args.out_h5} and {args.out_csv}")


if __name__ == "__main__":
    main()
