"""Validate one GPU node before launching the comparison: `ssvae-check-gpu`.

It reports the GPU it sees; per model, ms per training step eager and compiled, with TF32 off
and on; the steps per second of 1, 2 and 4 training processes sharing the GPU; the validation
accuracy of ExactM2 and MLP after one real-MNIST epoch, compiled and eager; and the projected
wall time of the whole comparison (every run and seed of the config) on this GPU. The timings
are `ssvae.bench`'s. Writes one JSON file and prints a short table.
"""

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from ssvae import bench, compute, job, runfile
from ssvae.cli import entry_point_parser
from ssvae.config import ConfigError, run_settings
from ssvae.errors import UserError, exit_on_user_error
from ssvae.io import write_atomic
from ssvae.splits import write_split

EPOCH_RUNS = ("ExactM2", "MLP")  # trained one real epoch, compiled against eager
# Eager and compiled train seed 1 from the same random stream: only float rounding separates
# them, which 500 steps can grow into a difference of a few validation images in a hundred, not
# into the points that separate a broken compiled step (a wrong kernel, a skipped update). On
# an H200 (README, "On a GPU") the differences were 0.0025 (ExactM2) and 0.0045 (MLP).
AGREEMENT = 0.02
TIMINGS = [(compiled, tf32) for compiled in (False, True) for tf32 in (False, True)]
SHARED_TIMING = "compiled, tf32 off"  # how the processes sharing the GPU train


def timing_name(compiled: bool, tf32: bool) -> str:
    return f"{'compiled' if compiled else 'eager'}, tf32 {'on' if tf32 else 'off'}"


def measured_runs(config: dict, runs: list[str]) -> dict[str, str]:
    """Each run -> the run measured for it: the first run of the same model and settings (runs
    that differ in nothing the step's cost depends on share a measurement)."""
    first_of = {}
    measured = {}
    for run in runs:
        definition = config["runs"][run]
        key = (definition["model"], yaml.safe_dump(definition.get("params", {})))
        measured[run] = first_of.setdefault(key, run)
    return measured


def time_models(config: dict, runs: list[str], data: Path, device: torch.device,
                warmup: int, steps: int, log) -> dict:  # fmt: skip
    """Per measured run: bench's row for each of eager and compiled, TF32 off and on."""
    rows = {}
    for run in dict.fromkeys(measured_runs(config, runs).values()):
        cfg = run_settings(config, run, seed=1)
        rows[run] = {}
        for compiled, tf32 in TIMINGS:
            compute.set_tf32(tf32)
            row = bench.bench_run(cfg, data, device, compiled, warmup, steps, log=log)
            rows[run][timing_name(compiled, tf32)] = row
            log(f"{run}: {timing_name(compiled, tf32)}: {row['ms_per_step']:.2f} ms/step")
    compute.set_tf32(False)
    return rows


def time_sharing(config_path: Path, run: str, data: Path, device: torch.device,
                 warmup: int, steps: int, jobs: list[int], log) -> list[dict]:  # fmt: skip
    """Steps per second of n processes training `run` at once, compiled as on the cluster."""
    options = {
        "--config": config_path,
        "--data": data,
        "--device": str(device),
        "--warmup-steps": warmup,
        "--steps": steps,
        "--compile": "auto",
        "--threads": 1,
        "--tf32": "off",
        "--flush-subnormals": "on",
    }
    rows = []
    for n in jobs:
        rows.append(bench.bench_parallel_jobs(run, n, options))
        log(f"{run}: {n} processes: {rows[-1]['steps_per_s_total']:.1f} steps/s in total")
    return rows


def one_epoch_accuracy(config: dict, run: str, data: Path, device: torch.device,
                       log) -> dict:  # fmt: skip
    """Validation accuracy after epoch 0 (one real epoch), eager and compiled, seed 1."""
    cfg = dataclasses.replace(run_settings(config, run, seed=1), epochs=0)
    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        split = Path(scratch) / "split.json"
        with np.load(data) as arrays:
            write_split(arrays["train_y"], cfg.seed, split)
        for compiled in (False, True):
            out = Path(scratch) / f"compiled_{compiled}.h5"
            job.train(cfg, data, split, out, device, log=lambda *a, **k: None, compiled=compiled)
            attrs = runfile.read_attrs(out)
            accuracy = float(runfile.read_history(out)["valid"]["accuracy"][-1])
            result["compiled" if compiled else "eager"] = {
                "valid_accuracy": accuracy,
                "step": runfile.how_the_step_ran(attrs),
                "wall_seconds": float(attrs["wall_seconds"]),
            }
    difference = result["compiled"]["valid_accuracy"] - result["eager"]["valid_accuracy"]
    result |= {"difference": difference, "agree": abs(difference) <= AGREEMENT}
    log(f"{run}: one epoch: eager {result['eager']['valid_accuracy']:.4f}, "
        f"compiled {result['compiled']['valid_accuracy']:.4f}")  # fmt: skip
    return result


def projection(config: dict, runs: list[str], models: dict, sharing: list[dict]) -> dict:
    """Hours for every run and seed of the config, one job at a time, per timing; and, for the
    timing the sharing was measured with (compiled, TF32 off, as the workflow runs by default),
    with the best measured number of jobs sharing the GPU (their summed throughput over one
    job's, measured on the first run)."""
    n_seeds = len(config["seeds"])
    measured = measured_runs(config, runs)
    serial = {
        name: sum(models[measured[run]][name]["s_per_run"] for run in runs) * n_seeds / 3600
        for name in (timing_name(*timing) for timing in TIMINGS)
    }
    result = {"runs": len(runs), "seeds": n_seeds, "hours_one_job_at_a_time": serial}
    if sharing:
        single = next((row for row in sharing if row["jobs"] == 1), None)
        if single is not None:
            best = max(sharing, key=lambda row: row["steps_per_s_total"])
            speedup = best["steps_per_s_total"] / single["steps_per_s_total"]
            result |= {
                "jobs_sharing_the_gpu": best["jobs"],
                "sharing_speedup": speedup,
                "hours_sharing": {SHARED_TIMING: serial[SHARED_TIMING] / speedup},
            }
    return result


def run_check(config_path: Path, data: Path, device: torch.device, runs: list[str] | None,
              warmup: int, steps: int, jobs: list[int], log=print) -> dict:  # fmt: skip
    """Everything the check measures, as the JSON it writes; `runs` default to the compared
    runs, the first of which is the one timed in processes sharing the device."""
    config = yaml.safe_load(config_path.read_text())
    runs = runs or config["compare"]
    for run in runs:
        run_settings(config, run, seed=1)  # an undefined run: one line, before any timing
    log(f"device: {compute.device_name(device, detailed=True)}")
    models = time_models(config, runs, data, device, warmup, steps, log)
    sharing = time_sharing(config_path, runs[0], data, device, warmup, steps, jobs, log)
    epochs = {
        run: one_epoch_accuracy(config, run, data, device, log) for run in EPOCH_RUNS if run in runs
    }
    return {
        "device": compute.device_name(device, detailed=True),
        **compute.versions(),
        "warmup_steps": warmup,
        "steps": steps,
        "models": models,
        "sharing": sharing,
        "one_epoch": epochs,
        "agreement_threshold": AGREEMENT,
        "projection": projection(config, runs, models, sharing),
    }


def print_table(report: dict) -> None:
    print(f"\n{report['device']}; torch {report['torch_version']}, CUDA {report['cuda_version']}")
    names = [timing_name(*timing) for timing in TIMINGS]
    print(f"{'ms per step':<24}" + "".join(f"{name:>20}" for name in names))
    fell_back = []
    for run, rows in report["models"].items():
        cells = []
        for name in names:
            # A compiled timing whose step fell back to eager is marked, and said below.
            mark = (
                "*"
                if name.startswith("compiled") and rows[name]["step"].startswith("eager")
                else ""
            )
            fell_back += [f"{run} ({name})"] if mark else []
            cells.append(f"{rows[name]['ms_per_step']:.2f}{mark}".rjust(20))
        print(f"{run:<24}" + "".join(cells))
    if fell_back:
        print(f"* compiling failed, timed eagerly: {', '.join(fell_back)} (the log says why)")
    for row in report["sharing"]:
        eager = [step for step in row["step_per_job"] if step.startswith("eager")]
        note = f" ({len(eager)} of them fell back to eager)" if eager else ""
        print(f"{row['run']}: {row['jobs']} processes sharing the device: "
              f"{row['steps_per_s_total']:.1f} steps/s in total{note}")  # fmt: skip
    for run, result in report["one_epoch"].items():
        verdict = "agree" if result["agree"] else f"DIFFER by more than {AGREEMENT}"
        print(f"{run} after one epoch: valid accuracy eager {result['eager']['valid_accuracy']:.4f}"
              f", compiled {result['compiled']['valid_accuracy']:.4f} "
              f"({result['compiled']['step']}): {verdict}")  # fmt: skip
    projected = report["projection"]
    what = f"{projected['runs']} runs x {projected['seeds']} seeds"
    for name, hours in projected["hours_one_job_at_a_time"].items():
        line = f"projected {what}, {name}: {hours:.2f} h one job at a time"
        if name in projected.get("hours_sharing", {}):
            line += (f", {projected['hours_sharing'][name]:.2f} h with "
                     f"{projected['jobs_sharing_the_gpu']} jobs sharing the device")  # fmt: skip
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser("ssvae-check-gpu", __doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path("config.yaml"), help="the workflow's config"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("results/data/mnist.npz"),
        help="prepared MNIST arrays (snakemake --cores 1 results/data/mnist.npz)",
    )
    parser.add_argument("--runs", nargs="+", help="run ids (default: the config's compare list)")
    parser.add_argument("--device", default="cuda", help="the CUDA device to check")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[1, 2, 4], help="processes sharing the GPU"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/bench/check_gpu.json"), help="JSON to write"
    )
    args = parser.parse_args(argv)
    for name in ("warmup_steps", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.jobs) < 1:
        parser.error(f"--jobs must be at least 1, not {min(args.jobs)}")
    with exit_on_user_error("ssvae-check-gpu"):
        if not torch.cuda.is_available():
            raise UserError(
                f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: "
                f"{torch.version.cuda or 'none'}); run it on a GPU node"
            )
        device = compute.pick_device(args.device)
        if device.type != "cuda":
            raise ConfigError(f"--device: {args.device!r} is not a CUDA device")
        for path in (args.config, args.data):
            if not path.is_file():
                raise UserError(f"{path} not found")
        report = run_check(
            args.config, args.data, device, args.runs, args.warmup_steps, args.steps, args.jobs
        )
        write_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print_table(report)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
