"""Checkpoints of a training run, so that a killed or preempted job resumes where it stopped.

Each seed has its own checkpoint, whether it trained alone or in a pack: a checkpoint written by
a pack resumes in a job of one seed and the other way round. It holds everything the rest of the
seed's run depends on: its model and optimizer state (the BatchNorm statistics are model
buffers), its random stream, the metric history so far, and where training stands (the next
epoch, or a position inside an epoch). It also holds a fingerprint of the run's settings and of
the training code; a checkpoint whose fingerprint differs is refused, never resumed silently.
Its content is sealed by a digest written with it: a damaged checkpoint is never resumed.
"""

import hashlib
import io
import sys
from collections import defaultdict
from pathlib import Path

import torch

from ssvae.errors import UserError
from ssvae.io import DamagedFile, sha256, write_atomic
from ssvae.models import MODELS, model_class
from ssvae.runfile import RunLog


class CheckpointMismatch(UserError):
    """A checkpoint written by other settings or other code than the run that found it."""


def code_digest() -> str:
    """sha256 over the source of every ssvae module loaded in this process: the code that
    training runs (figure and report code is never imported by it). Every model's module is
    loaded first: a job imports its model's only when it builds it, after this digest."""
    for name in MODELS:
        model_class(name)
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


def fingerprint(config_json: str, retrain_request: str | None = None) -> dict:
    """What a checkpoint must have been written with to be resumed: these settings, this
    training code and torch. A seed being retrained on request also records which request
    (`retrain_request`), so that the retrain resumes only checkpoints of its own."""
    return {
        "config": config_json,
        "code": code_digest(),
        "torch": str(torch.__version__),
        "retrain_request": retrain_request,
    }


def capture_seed(i: int, fingerprint: dict, next_epoch: int, progress: dict | None, model,
                 optimizer, run_log, wall_seconds: float) -> dict:  # fmt: skip
    """Seed i's whole training state, to resume from: where training stands (the epoch to run
    next and, mid-epoch, its progress), its row of the model and of the optimizer state (the seed
    dimension leads every tensor of both), its random stream and what it logged."""
    return {
        "fingerprint": fingerprint,
        "next_epoch": next_epoch,
        "progress": progress,
        "model": {name: tensor[i].clone() for name, tensor in model.state_dict().items()},
        "optimizer": _optimizer_rows(optimizer.state_dict(), lambda tensor, _: tensor[i].clone()),
        "rng": model.random.generators[i].get_state(),
        "history": _map_values(run_log.history, lambda value: value),
        "extras": _map_values(run_log.arrays, torch.as_tensor),
        "wall_seconds": wall_seconds,
    }


def restore_seeds(states: list[dict], model, optimizer) -> list[dict] | None:
    """Put the seeds' captured states (all at the same step) back into the pack's model,
    optimizer and random streams; each seed's progress within the epoch, or None between
    epochs."""
    model.load_state_dict(
        {
            name: torch.stack([state["model"][name] for state in states])
            for name in states[0]["model"]
        }
    )
    per_seed = [state["optimizer"] for state in states]
    optimizer.load_state_dict(
        _optimizer_rows(per_seed[0], lambda _, path: torch.stack([_at(s, path) for s in per_seed]))
    )
    model.random.set_state([state["rng"] for state in states])
    if states[0]["progress"] is None:
        return None
    return [state["progress"] for state in states]


def seed_log(state: dict) -> tuple[RunLog, float]:
    """What the seed had logged and the wall seconds it had spent."""
    # A checkpoint loaded onto a GPU has put these there too.
    arrays = _map_values(state["extras"], lambda value: value.cpu().numpy())
    run_log = RunLog(
        history={group: defaultdict(list, named) for group, named in state["history"].items()},
        arrays={group: defaultdict(list, named) for group, named in arrays.items()},
    )
    return run_log, state["wall_seconds"]


def _optimizer_rows(state_dict: dict, convert) -> dict:
    """The optimizer's state dict with `convert` applied to every per-parameter tensor that has
    the seed dimension (Adam's moments); its step counts, shared by the seeds, as they are."""
    return {
        "state": {
            key: {
                name: convert(value, (key, name)) if value.dim() > 0 else value
                for name, value in values.items()
            }
            for key, values in state_dict["state"].items()
        },
        "param_groups": state_dict["param_groups"],
    }


def _at(optimizer_state: dict, path: tuple):
    key, name = path
    return optimizer_state["state"][key][name]


def _map_values(groups: dict, convert) -> dict:
    """{group: {name: [values]}} with every value converted, as plain dicts and lists."""
    return {
        group: {name: [convert(value) for value in values] for name, values in named.items()}
        for group, named in groups.items()
    }


# A checkpoint file: this line with the sha256 of what follows it, then torch.save's bytes.
SEAL = b"ssvae checkpoint, sha256 "


def save(path: Path, state: dict) -> None:
    """Write atomically: a kill or a full disk during the write leaves the previous checkpoint
    intact. Serialised in memory first, so that a failed write is a plain OSError (torch's
    own zip writer reports a full disk as an internal error)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    write_atomic(path, SEAL + sha256(payload).encode() + b"\n" + payload)


def read(path: Path, device: torch.device) -> dict:
    """The state a checkpoint file holds, its content checked against its digest: a damaged
    file is a DamagedFile naming it. A file without the seal is not taken for a damaged
    checkpoint (nor overwritten): it is a CheckpointMismatch, for the user to delete."""
    try:
        header, _, payload = path.read_bytes().partition(b"\n")
    except OSError as err:
        reason = err.strerror or err
        raise CheckpointMismatch(f"checkpoint {path} cannot be read ({reason})") from None
    if not header.startswith(SEAL):
        raise CheckpointMismatch(
            f"checkpoint {path} is not a checkpoint of this version of ssvae-train; delete it"
        )
    if header.removeprefix(SEAL).decode(errors="replace") != sha256(payload):
        raise DamagedFile(path)
    try:
        return torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as err:  # sound bytes that this torch cannot load (another version's)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointMismatch(
            f"checkpoint {path} cannot be read ({reason}); delete it"
        ) from None


def load(path: Path, expected: dict, device: torch.device) -> dict:
    """The checkpoint's sound state (see `read`), after checking that `expected` (a
    fingerprint) matches it (CheckpointMismatch). A checkpoint written for a retrain request is
    a mismatch only for another request (`expected["retrain_request"]`)."""
    state = read(path, device)
    found = state.get("fingerprint") if isinstance(state, dict) else None
    if not isinstance(found, dict) or set(found) != set(expected):
        raise CheckpointMismatch(
            f"checkpoint {path} is not a checkpoint of ssvae-train (no fingerprint); delete it"
        )
    if expected["retrain_request"] not in (None, found["retrain_request"]):
        raise CheckpointMismatch(f"checkpoint {path} was written before the retrain asked for")
    for key, what in (("config", "settings"), ("code", "training code"), ("torch", "torch")):
        if found[key] != expected[key]:
            raise CheckpointMismatch(
                f"checkpoint {path} was written with other {what} than this run's; delete it "
                "to train from the start"
            )
    return state
