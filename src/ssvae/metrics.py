"""Aggregate every run's history into one tidy table, and summarise it per run.

The aggregated HDF5 file holds four tables, each a group with one dataset per column:

    /table   run, seed, split, epoch, metric, value   (one row per logged value)
    /runs    run, label, model, order, palette_index, seeds_configured
                                      (the runs the config names, in its order)
    /seeds   run, seed, status, device, torch_version, cuda_version, step, wall_seconds
                                      (one row per run file; step: how the training step ran)
    /z_kl    run, seed, epoch, kl                     (kl: (rows, z dimensions), the KL of each
                                      z dimension averaged over the validation set)

`read_table`, `read_runs`, `read_seeds` and `read_z_kl` return them as pandas DataFrames
(`read_z_kl` also returns the KL array).
"""

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ssvae import runfile
from ssvae.cli import entry_point_parser
from ssvae.errors import InputError, exit_on_user_error
from ssvae.io import read_hdf5, write_atomic

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


def summarize(table: pd.DataFrame, runs: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """Per run: validation accuracy over seeds at the best epoch of the mean curve and at the
    last epoch, test accuracy (mean and sample standard deviation over seeds), seeds present and
    complete, and wall time per seed and in total."""
    rows = []
    for run in runs.itertuples():
        valid = seed_curves(table, run.run, "valid", "accuracy")
        test = seed_curves(table, run.run, "test", "accuracy")
        row = {"run": run.run, "label": run.label, "model": run.model, "n_seeds": valid.shape[1]}
        run_seeds = seeds[seeds.run == run.run]
        row |= {
            "seeds_configured": run.seeds_configured,
            "seeds_complete": int((run_seeds.status == "complete").sum()),
            "wall_seconds_mean": run_seeds.wall_seconds.mean(),
            "wall_seconds_total": run_seeds.wall_seconds.sum(),
        }
        if not valid.empty:
            mean = valid.mean(axis=1)
            best_epoch = int(mean.idxmax())
            last_epoch = int(valid.index.max())
            row |= {
                "best_epoch": best_epoch,
                "valid_accuracy_best_mean": mean[best_epoch],
                "valid_accuracy_best_std": valid.loc[best_epoch].std(ddof=1),
                "last_epoch": last_epoch,
                "valid_accuracy_last_mean": mean[last_epoch],
                "valid_accuracy_last_std": valid.loc[last_epoch].std(ddof=1),
            }
        if not test.empty:
            final = test.iloc[-1]
            row |= {"test_accuracy_mean": final.mean(), "test_accuracy_std": final.std(ddof=1)}
        rows.append(row)
    return pd.DataFrame(rows)


def seed_record(path: Path) -> dict:
    attrs = runfile.read_attrs(path)
    return {
        "run": str(attrs["run"]),
        "seed": int(attrs["seed"]),
        "status": str(attrs["status"]),
        "device": str(attrs["device"]),
        "torch_version": str(attrs["torch_version"]),
        "cuda_version": str(attrs.get("cuda_version", "not recorded")),
        "step": runfile.how_the_step_ran(attrs),
        "wall_seconds": float(attrs["wall_seconds"]),
    }


def z_kl_rows(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The validation-mean KL per z dimension of one run file (no rows for runs without z)."""
    attrs = runfile.read_attrs(path)
    z_stats = runfile.read_arrays(path, "z_stats") if runfile.has_group(path, "z_stats") else {}
    epochs = z_stats.get("epoch", np.zeros(0, dtype=np.int64))
    kl = z_stats.get("kl_per_dim_mean", np.zeros((0, 0)))
    rows = pd.DataFrame({"run": str(attrs["run"]), "seed": int(attrs["seed"]), "epoch": epochs})
    return rows, kl


def aggregate(run_files: list[Path], runs: dict[str, dict], out_h5: Path, out_csv: Path) -> None:
    """`runs` maps run id to {"label", "model", "palette_index", "seeds"}, in the order figures
    should use; `palette_index` keeps a run's colour when the comparison changes."""
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
    summary = summarize(table, run_frame, seed_frame)
    z_kl = [z_kl_rows(path) for path in run_files]
    z_kl_with_rows = [kl for rows, kl in z_kl if len(rows)]
    aggregated = io.BytesIO()
    with h5py.File(aggregated, "w") as f:
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
    parser.add_argument("--out-h5", type=Path, required=True, help="aggregated .h5 to write")
    parser.add_argument("--out-csv", type=Path, required=True, help="summary CSV to write")
    args = parser.parse_args(argv)
    with exit_on_user_error("ssvae-metrics"):
        try:
            runs = json.loads(args.runs)
        except json.JSONDecodeError as err:
            raise InputError(f"--runs is not valid JSON ({err})") from None
        aggregate(args.run_files, runs, args.out_h5, args.out_csv)
    print(f"wrote {args.out_h5} and {args.out_csv}")
