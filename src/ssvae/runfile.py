"""The HDF5 file one training run writes, and how to read it back (no torch needed).

Layout (metric names keep the original's slashes, so "p(x)/KL_Z" is a nested group):

    /                  attrs: run, model, seed, config (resolved settings as JSON),
                       code_digest (sha256 of the training code), torch_version,
                       cuda_version ("none" for a CPU build of torch), device (the GPU's
                       name on CUDA), compile_requested (compiling asked for), step_compiled,
                       step_captured (the step ran compiled; as CUDA graphs),
                       compile_fallback (why compiling failed, "" if it did not), tf32,
                       labels_per_class (of its labeled split),
                       n_params, ssvae_version, cpu_threads,
                       status (complete or diverged), wall_seconds (training, from start
                       to this write, over every attempt), seeds_in_job (the seeds trained
                       together in the job that wrote it), job_seconds (that job's time, its
                       last attempt, from start to this write), peak_memory_mb (that job's
                       peak resident memory), finished_at
    /train/epoch       (n_epochs,)  one entry per training epoch, metrics are epoch means
    /train/<metric>    (n_epochs,)  loss, bound, boundU, boundL, classifier, accuracy, objective,
                                    pnorm, gnorm, the per-path terms below, hyperparameters/lr,
                                    hyperparameters/update_ctr, duration, and for the VAEs
                                    hyperparameters/annealing/{kl_z, kl_alpha, bound,
                                    classifier, sharpening} (the coefficients' epoch means),
                                    hyperparameters/sharpening (the annealed value a run with
                                    sharpening uses: its sharpening times the multiplier) and
                                    LogGamma's hyperparameters/betaprior
    /valid/epoch       (n_evals,)   one entry per validation, metrics over the whole split
    /valid/<metric>    (n_evals,)

Per-path terms, per example and averaged, named as the original logs them: p(x)/... for the
unlabeled path, p(x,y)/... for the labeled one. KL_Z is the term as it enters the bound (ExactM2:
kl_factor x sum_c pi_c KL_Z,c, the original's doubled term with kl_factor 2); the class
latent's KL as KL_Y (the M2 family), KL_alpha (LogisticNormal) or KL_loggamma (LogGamma);
nllX = -log p(x | class, z); p(x,y)/nllY = -log p(y) of the label under the model (log 10, the
uniform prior, for the M2 family).
    /test/...          (1,)         after the last epoch
    /z_stats/epoch               (n_evals,)
    /z_stats/mu_last_batch       (n_evals, 100, 50)  last 100 q(z|.) rows of the last validation
    /z_stats/logcov2_last_batch  (n_evals, 100, 50)    batch, as the original's output_verbose
    /z_stats/kl_per_dim_mean     (n_evals, 50)  KL per z dimension averaged over the validation set
    /samples/epoch     (n_evals,)
    /samples/p(x)      (n_evals, 1000, 784) uint8: decoder means x 255, classes 0..9 by 100s
"""

import io
import json
import resource
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

import ssvae
from ssvae.errors import InputError
from ssvae.io import read_hdf5, write_atomic

SPLITS = ("train", "valid", "test")
ARRAY_GROUPS = ("z_stats", "samples")


# Where a configuration keeps each seed's run file, inside its results_dir; the seed's other
# files (checkpoint, progress, lock, logs) lie beside it.
RUN_FILE = "runs/{run}/seed{seed}/run.h5"


def run_file_path(results_dir: str | Path, run: str, seed: int) -> Path:
    return Path(results_dir) / RUN_FILE.format(run=run, seed=seed)


def checkpoint_path(out_path: Path) -> Path:
    """Where the workflow keeps a seed's checkpoint: run.h5 -> checkpoint.pt."""
    return Path(out_path).with_name("checkpoint.pt")


def diverged_path(out_path: Path) -> Path:
    """Where a diverged run keeps its metrics (run.h5 -> run.diverged.h5)."""
    return out_path.with_name(f"{out_path.stem}.diverged{out_path.suffix}")


def run_attributes(run: str, model: str, seed: int, computation: dict, n_params: int,
                   status: str, wall_seconds: float, cpu_threads: int) -> dict:  # fmt: skip
    """A run file's own attributes (see the layout above): which run, what was computed and
    how, its status and its training time over every attempt."""
    return {
        "run": run,
        "model": model,
        "seed": seed,
        **computation,
        "n_params": n_params,
        "ssvae_version": ssvae.__version__,
        "cpu_threads": cpu_threads,
        "status": status,
        "wall_seconds": wall_seconds,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def job_attributes(seeds_in_job: list[int], job_seconds: float) -> dict:
    """What the job that writes a run file cost, and which seeds shared it."""
    # ru_maxrss is in kB on Linux.
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seeds_in_job": seeds_in_job,
        "job_seconds": job_seconds,
        "peak_memory_mb": peak_memory_mb,
    }


@dataclass
class RunLog:
    """What a run has logged so far, as its run file holds it: per split, the metrics of each
    logged epoch; per array group, the arrays of each evaluation."""

    history: dict = field(default_factory=lambda: {s: defaultdict(list) for s in SPLITS})
    arrays: dict = field(default_factory=lambda: {g: defaultdict(list) for g in ARRAY_GROUPS})

    def record(self, group: str, epoch: int, values: dict) -> None:
        store = self.history[group] if group in self.history else self.arrays[group]
        store["epoch"].append(epoch)
        for name, value in values.items():
            store[name].append(value)

    def write(self, path: Path, attrs: dict) -> bytes:
        return write(path, attrs, self.history, {g: a for g, a in self.arrays.items() if a})


def write(path: Path, attrs: dict, history: dict, arrays: dict) -> bytes:
    """Write atomically: `history[split][metric]` lists and `arrays[group][name]` arrays. Built
    in memory, so that a write that fails (a full disk) is one OutputError naming `path`; the
    bytes written are returned."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for key, value in attrs.items():
            # str() too: torch.__version__ is a str subclass that h5py cannot store.
            f.attrs[key] = (
                json.dumps(value, sort_keys=True)
                if isinstance(value, dict)
                else (str(value) if isinstance(value, str) else value)
            )
        for split, metrics in history.items():
            for name, values in metrics.items():
                f.create_dataset(f"{split}/{name}", data=np.asarray(values))
        for group, named in arrays.items():
            for name, values in named.items():
                values = np.asarray(values)
                big = values.ndim > 1
                f.create_dataset(
                    f"{group}/{name}",
                    data=values,
                    compression="gzip" if big else None,
                    chunks=(1, *values.shape[1:]) if big and len(values) else None,
                )
    write_atomic(path, buffer.getvalue())
    return buffer.getvalue()


def read_history(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """`{split: {metric: values}}` for every split the file has; `epoch` is one of the metrics."""
    history = {}
    with read_hdf5(path) as f:
        for split in SPLITS:
            if split not in f:
                continue
            metrics = {}
            f[split].visititems(
                lambda name, obj, out=metrics: (
                    out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
            history[split] = metrics
    return history


def read_attrs(path: Path) -> dict:
    with read_hdf5(path) as f:
        attrs = dict(f.attrs)
        attrs["config"] = json.loads(attrs["config"])  # a missing attribute: InputError
    return attrs


def has_group(path: Path, group: str) -> bool:
    with read_hdf5(path) as f:
        return group in f


def read_arrays(path: Path, group: str) -> dict[str, np.ndarray]:
    """Every dataset of one group (`z_stats`, `samples`) as arrays."""
    with read_hdf5(path) as f:
        return {name: dataset[()] for name, dataset in f[group].items()}


def records(path: Path, attrs: dict, status: str = "complete") -> bool:
    """Whether `path` is a readable run file of that status whose attributes include `attrs`."""
    try:
        found = read_attrs(path)
    except (InputError, ValueError):
        return False
    return found.get("status") == status and all(
        key in found and found[key] == value for key, value in attrs.items()
    )


def how_the_step_ran(attrs: dict) -> str:
    """eager, compiled, compiled as CUDA graphs, or eager after compiling failed."""
    if "step_compiled" not in attrs:
        return "not recorded"  # a run file written before ssvae recorded it
    if attrs["step_compiled"]:
        return "compiled, CUDA graphs" if attrs["step_captured"] else "compiled"
    return "eager (compiling failed)" if attrs["compile_fallback"] else "eager"
