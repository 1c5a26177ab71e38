"""A tiny synthetic set of aggregated runs whose every summary number is known by hand."""

from pathlib import Path

import numpy as np

from ssvae import metrics, runfile

Z = 50
# Validation accuracy at epochs 0, 10, 20 and test accuracy, per seed.
EXACT = {
    1: ([0.80, 0.90, 0.88], 0.91),
    2: ([0.82, 0.94, 0.90], 0.93),
    3: ([0.84, 0.92, 0.92], 0.95),
}
MLP = {1: ([0.77, 0.75, 0.74], 0.70), 2: ([0.75, 0.73, 0.72], 0.72)}
NEW = {1: ([0.40, 0.50, 0.45], 0.48)}
# How the MLP's seeds were computed: on a GPU, compiled as CUDA graphs, and falling back to eager.
MLP_ON_GPU = {
    seed: {
        "device": "NVIDIA H200",
        "cuda_version": "12.8",
        "step_compiled": not fallback,
        "step_captured": not fallback,
        "compile_fallback": "BackendCompilerFailed: no compiler" if fallback else "",
    }
    for seed, fallback in ((1, False), (2, True))
}
EPOCHS = [0, 10, 20]
RUNS = {
    "ExactM2": {"label": "ExactM2", "model": "ExactM2", "palette_index": 0, "seeds": [1, 2, 3]},
    "MLP": {"label": "MLP", "model": "MLP", "palette_index": 8, "seeds": [1, 2, 3]},
    "New": {"label": "New run", "model": "ApproxM2", "palette_index": 9, "seeds": [1, 2, 3]},
}


def kl_with_active_dims(n_active: int) -> np.ndarray:
    """Validation-mean KL per dimension: `n_active` dimensions well above the 0.01 threshold,
    one exactly at it (not active: the test is strict), the rest collapsed."""
    kl = np.full(Z, 0.001)
    kl[:n_active] = 0.5
    kl[n_active] = 0.01
    return kl


def write_run(
    directory: Path,
    run: str,
    seed: int,
    valid: list,
    test: float,
    wall: float,
    active: list[int] | None,
    **computation,
) -> Path:
    """A complete run file; `computation` overrides how it was computed (eager on CPU)."""
    path = directory / run / f"seed{seed}.h5"
    attrs = {
        "run": run,
        "model": RUNS[run]["model"],
        "seed": seed,
        "config": {},
        "status": "complete",
        "device": "cpu",
        "torch_version": "2.13.0",
        "cuda_version": "none",
        "step_compiled": False,
        "step_captured": False,
        "compile_fallback": "",
        "wall_seconds": wall,
        **job_attributes(run, seed),
    } | computation
    history = {
        "train": {"epoch": list(range(21)), "accuracy": [1.0] * 21, "loss": [200.0] * 21},
        "valid": {"epoch": EPOCHS, "accuracy": valid, "loss": [300.0, 250.0, 260.0]},
        "test": {"epoch": [20], "accuracy": [test]},
    }
    arrays = {}
    if active is not None:
        arrays["z_stats"] = {
            "epoch": EPOCHS,
            "kl_per_dim_mean": np.stack([kl_with_active_dims(n) for n in active]),
        }
    runfile.write(path, attrs, history, arrays)
    return path


def synthetic_metrics(tmp_path: Path, labels_per_class: int = 10) -> Path:
    """metrics.h5 aggregated from the synthetic run files, as the workflow's rule makes it for
    runs of `labels_per_class` labels a class."""
    if labels_per_class != 10:
        tmp_path = tmp_path / f"labels_per_class{labels_per_class}"
    files = []
    for seed, (valid, test) in EXACT.items():
        # Active dimensions over the validations; at the last one 5, 7 and 9 for seeds 1..3.
        active = [20, 10, 3 + 2 * seed]
        files.append(write_run(tmp_path, "ExactM2", seed, valid, test, 100.0 * seed, active))
    for seed, (valid, test) in MLP.items():
        files.append(write_run(tmp_path, "MLP", seed, valid, test, 30.0, None, **MLP_ON_GPU[seed]))
    for seed, (valid, test) in NEW.items():
        files.append(write_run(tmp_path, "New", seed, valid, test, 9000.0, [4, 4, 4]))
    out = tmp_path / "results/metrics/metrics.h5"
    metrics.aggregate(files, RUNS, out, out.with_name("summary.csv"), "ExactM2", labels_per_class)
    return out


# What each training job cost, as ssvae-train records it in the run files: (seeds in the job,
# job seconds, peak memory in MB). MLP's two seeds trained in one job of 80 s (40 s each); the
# New run's file has no memory recorded.
JOBS = {
    ("ExactM2", "seed1"): ([1], 110.0, 1500.1),
    ("ExactM2", "seed2"): ([2], 210.0, 1600.2),
    ("ExactM2", "seed3"): ([3], 310.0, 1700.3),
    ("MLP", "seed1"): ([1, 2], 80.0, 810.0),
    ("MLP", "seed2"): ([1, 2], 80.0, 810.0),
    ("New", "seed1"): ([1], 9100.0, None),
}


def job_attributes(run: str, seed: int) -> dict:
    seeds, seconds, memory = JOBS[run, f"seed{seed}"]
    job = {"seeds_in_job": seeds, "job_seconds": seconds}
    return job if memory is None else job | {"peak_memory_mb": memory}
