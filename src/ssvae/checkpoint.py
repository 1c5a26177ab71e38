"""Checkpoints of a training run, so that a killed or preempted job resumes where it stopped.

A checkpoint holds everything the rest of the run depends on: model and optimizer state (the
BatchNorm statistics are model buffers), every RNG state, the metric history so far, and where
training stands (the next epoch, or a position inside an epoch). It also holds a fingerprint of
the run's settings and of the training code; a checkpoint whose fingerprint differs is refused,
never resumed silently.
"""

import hashlib
import io
import sys
from collections import defaultdict
from pathlib import Path

import torch

from ssvae.errors import UserError
from ssvae.io import write_atomic
from ssvae.runfile import RunLog


class CheckpointMismatch(UserError):
    """A checkpoint written by other settings or other code than the run that found it."""


def code_digest() -> str:
    """sha256 over the source of every ssvae module loaded in this process: the code that
    training runs (figure and report code is never imported by it)."""
    digest = hashlib.sha256()
    modules = sorted(
        (name, module)
        for name, module in sys.modules.items()
        if (name == "ssvae" or name.startswith("ssvae.")) and getattr(module, "__file__", None)
    )
    for name, module in modules:
        digest.update(name.encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def fingerprint(config_json: str) -> dict:
    return {"config": config_json, "code": code_digest(), "torch": str(torch.__version__)}


def finished_copy_path(checkpoint_path: Path) -> Path:
    """Where a completed run keeps a second name of its run file (checkpoint.pt ->
    checkpoint.finished.h5), so that a rerun after the run file was thrown away (snakemake
    interrupted as the job finished marks it incomplete) recovers it instead of training again."""
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.finished.h5")


def rng_states() -> dict:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def capture(fingerprint: dict, next_epoch: int, progress, model, optimizer, run_log,
            wall_seconds: float) -> dict:  # fmt: skip
    """The whole training state, to resume from: where training stands (the epoch to run next
    and, mid-epoch, its progress), model, optimizer, every RNG state and what was logged."""
    return {
        "fingerprint": fingerprint,
        "next_epoch": next_epoch,
        "progress": None if progress is None else vars(progress),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(),
        "history": _map_values(run_log.history, lambda value: value),
        "extras": _map_values(run_log.arrays, torch.as_tensor),
        "wall_seconds": wall_seconds,
    }


def restore(state: dict, model, optimizer) -> tuple[RunLog, int, dict | None, float]:
    """Put a captured state back into the model, the optimizer and the RNGs; what was logged,
    the epoch to run next, the progress within it (or None) and the wall seconds spent."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_states(state["rng"])
    arrays = _map_values(state["extras"], lambda value: value.numpy())
    run_log = RunLog(
        history={group: defaultdict(list, named) for group, named in state["history"].items()},
        arrays={group: defaultdict(list, named) for group, named in arrays.items()},
    )
    return run_log, state["next_epoch"], state["progress"], state["wall_seconds"]


def _map_values(groups: dict, convert) -> dict:
    """{group: {name: [values]}} with every value converted, as plain dicts and lists."""
    return {
        group: {name: [convert(value) for value in values] for name, values in named.items()}
        for group, named in groups.items()
    }


def save(path: Path, state: dict) -> None:
    """Write atomically: a kill or a full disk during the write leaves the previous checkpoint
    intact. Serialised in memory first, so that a failed write is a plain OSError (torch's
    own zip writer reports a full disk as an internal error)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load(path: Path, expected: dict, device: torch.device) -> dict:
    """The checkpoint's state, after checking that `expected` (a fingerprint) matches it."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or truncated file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointMismatch(
            f"checkpoint {path} cannot be read ({reason}); delete it"
        ) from None
    found = state.get("fingerprint") if isinstance(state, dict) else None
    if not isinstance(found, dict) or set(found) != set(expected):
        raise CheckpointMismatch(
            f"checkpoint {path} is not a checkpoint of ssvae-train (no fingerprint); delete it"
        )
    for key, what in (("config", "settings"), ("code", "training code"), ("torch", "torch")):
        if found[key] != expected[key]:
            raise CheckpointMismatch(
                f"checkpoint {path} was written with other {what} than this run's; delete it "
                "to train from the start"
            )
    return state
