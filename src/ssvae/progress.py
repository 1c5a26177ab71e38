"""Where a training seed stands, as its job writes it and ssvae-status reads it (no torch).

Beside each run file, `run.progress.json`, rewritten whole when the job starts or resumes the
seed, after every epoch, when it writes the seed's checkpoint, and when the seed stops (done,
diverged, interrupted). It says which process trains the seed and when it last wrote, so that a
reader can tell a job at work from one that was killed without a word.
"""

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ssvae.io import write_atomic

TRAINING, INTERRUPTED, DIVERGED, DONE = "training", "interrupted", "diverged", "done"


def progress_path(out_path: Path) -> Path:
    """run.h5 -> run.progress.json."""
    return out_path.with_name(f"{out_path.stem}.progress.json")


@dataclass
class Progress:
    run: str
    seed: int
    epochs: int  # the last epoch: a run trains epochs 0..epochs
    state: str = TRAINING
    epoch: int = -1  # the last epoch completed
    seconds_per_epoch: float | None = None  # of this attempt so far, evaluations included
    valid_accuracy: float | None = None  # at the last validation
    valid_epoch: int | None = None
    checkpoint_epoch: int | None = None  # where its last checkpoint resumes: this epoch,
    checkpoint_step: int = 0  # after this many of its steps
    diverged_at: str = ""  # "epoch 12, step 344"
    seeds_in_job: int = 1  # the seeds its job trains together, sharing each epoch's time
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    updated: float = field(default_factory=time.time)  # seconds since the epoch

    def seconds_left(self) -> float | None:
        """Training time left at this attempt's rate; None before its first epoch ends."""
        if self.seconds_per_epoch is None:
            return None
        return (self.epochs - self.epoch) * self.seconds_per_epoch

    def write(self, out_path: Path) -> None:
        self.updated = time.time()
        write_atomic(progress_path(out_path), json.dumps(asdict(self), indent=1).encode())


def read_progress(out_path: Path) -> Progress | None:
    """The seed's progress as its job last wrote it; None if there is none or it cannot be
    read as one (it is only ever written whole, so that means someone else wrote it)."""
    try:
        record = json.loads(progress_path(out_path).read_text())
        return Progress(**{f.name: record[f.name] for f in fields(Progress)})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def duration(seconds: float) -> str:
    """A time span as people read it: '45 s', '12 min', '3 h 04 min', '2 d 05 h'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"
