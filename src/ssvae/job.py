"""A training job's policy: which of its seeds train, and together with which. The seeds of a
job (a pack: one seed, or several) train in one process on weights stacked along a leading seed
dimension (ssvae.nn); nothing of a seed depends on the seeds beside it: its labeled split, its
random stream, its BatchNorm statistics, its L2 term and gradient clipping, its Adam state, its
divergence, its checkpoint and its run file are its own. A seed whose result is already computed
(the result store) or known to diverge is not trained; seeds whose checkpoints stand at
different steps train one group after another (ssvae.loop)."""

import json
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from ssvae import checkpoint, compute, data, runfile, store
from ssvae.config import ConfigError, TrainConfig
from ssvae.errors import InputError, UserError
from ssvae.io import DamagedFile, OutputError, check_writable, write_atomic
from ssvae.loop import train_group
from ssvae.progress import INTERRUPTED, TRAINING, Progress
from ssvae.splits import read_split


class TrainingDiverged(UserError):
    """The training objective became non-finite."""


@dataclass
class SeedFiles:
    """Where one seed of a job reads its labeled split and writes its run file and checkpoint."""

    split: Path
    out: Path
    checkpoint: Path | None = None

    @property
    def lock(self) -> Path:
        """Held while a process trains the seed: two trainers never write one seed's files."""
        return self.out.with_name(f"{self.out.stem}.lock")


@dataclass
class Seed:
    """One seed of a pack: its settings and files, what it computes and how (its run file
    records it), and its training state."""

    cfg: TrainConfig
    files: SeedFiles
    fingerprint: dict  # of its settings and the training code: what its checkpoints carry
    computation: dict
    split: dict
    stored: Path | None = None  # its entry in the result store
    retrain: str | None = None  # the retrain request it answers, if one is pending
    saved: dict | None = None  # the checkpoint it resumes from
    run_log: runfile.RunLog = field(default_factory=runfile.RunLog)
    wall_before: float = 0.0  # seconds spent in earlier attempts
    diverged: str = ""  # why it stopped, if its objective went non-finite
    progress: Progress | None = None  # what its progress file says, while it trains

    @property
    def position(self) -> tuple:
        """Where its training stands: the next epoch and the step inside it (-1: between
        epochs, its order not drawn yet); (-1, -1) before anything. Seeds train together only
        from the same position."""
        if self.saved is None:
            return (-1, -1)
        progress = self.saved["progress"]
        return (self.saved["next_epoch"], -1 if progress is None else progress["steps_done"])

    def stored_record(self) -> dict:
        """What the store records beside a run file, to be read by people: what it computed."""
        return {
            "run": self.cfg.run,
            "seed": self.cfg.seed,
            "settings": json.loads(self.cfg.to_json()),
            "code_digest": self.fingerprint["code"],
            "split_digest": self.split["sha256"],
            "stored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def computation(cfg: TrainConfig, fingerprint: dict, device: torch.device,
                compiled: bool) -> dict:  # fmt: skip
    """What a seed computes and how: recorded in its run file."""
    return {
        "config": json.loads(cfg.to_json()),
        "code_digest": fingerprint["code"],
        **compute.versions(),
        "device": compute.device_name(device),
        "compile_requested": compiled,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def train(cfg: TrainConfig, data_path: Path, split_path: Path, out_path: Path,
          device: torch.device, log=print, checkpoint_path: Path | None = None,
          checkpoint_every: int = 0, stop=lambda: False, compiled: bool = False,
          result_store: store.ResultStore | None = None) -> None:  # fmt: skip
    """Train one seed: a pack of one (see `train_pack`)."""
    files = SeedFiles(split_path, out_path, checkpoint_path)
    train_pack(
        [cfg], data_path, [files], device, log, checkpoint_every, stop, compiled, result_store
    )


def train_pack(cfgs: list[TrainConfig], data_path: Path, files: list[SeedFiles],
               device: torch.device, log=print, checkpoint_every: int = 0,
               stop=lambda: False, compiled: bool = False,
               result_store: store.ResultStore | None = None) -> None:  # fmt: skip
    """Train the seeds of one run together and write each one's run file. With checkpoint
    files, each seed's training state goes to its own every `checkpoint_every` epochs and when
    `stop()` turns true (then Preempted is raised), and a seed that finds a checkpoint from the
    same settings and code resumes from it; seeds whose checkpoints stand at different steps
    train one group after another. A seed that diverges keeps what it logged in
    run.diverged.h5 while the others finish; TrainingDiverged is raised at the end. A seed
    whose run.diverged.h5 records this very computation is not trained again.
    With a result store, a seed whose computation it holds takes its run file from there, and
    each completed run file goes into it. A seed with a pending retrain request (ssvae.store)
    trains anew: the store and its diverged record stand in for nothing, and only checkpoints
    written for that request are resumed. `compiled` runs the step through torch.compile
    (CUDA graphs on CUDA)."""
    check_one_run(cfgs, files)
    check_outputs_writable(files)
    diverged_before = []
    arrays, data_digest = data.load_verified(data_path)  # read once: digest and images
    seeds = []
    for cfg, seed_files in zip(cfgs, files, strict=True):
        seed = new_seed(cfg, seed_files, data_digest, device, compiled, result_store)
        if seed.stored is not None:
            check_writable(seed.stored)
        if recovered_from_store(seed, result_store, log):
            continue
        kept = runfile.diverged_path(seed_files.out)
        if seed.retrain is None and runfile.records(kept, seed.computation, status="diverged"):
            # The same computation diverged before: training it again would diverge again.
            seed.diverged = (
                f"{cfg.run} seed {cfg.seed} diverged before with these settings and code, as "
                f"{kept} records; not trained again (delete that file to retry)"
            )
            log(seed.diverged, flush=True)
            diverged_before.append(seed)
            continue
        seeds.append(seed)
    for seed in seeds:
        seed.saved = resumable_checkpoint(seed, device, log)
    if seeds and cfgs[0].steps_per_epoch * cfgs[0].batch_size > len(arrays["train_x"]):
        raise InputError(  # a reduced data file
            f"{data_path}: {len(arrays['train_x'])} training images, fewer than an epoch of "
            f"{cfgs[0].steps_per_epoch} batches of {cfgs[0].batch_size} takes"
        )
    groups = defaultdict(list)
    for seed in seeds:
        groups[seed.position].append(seed)
    try:
        for position in sorted(groups):
            train_group(
                groups[position], arrays, device, log, checkpoint_every, stop, compiled,
                result_store,
            )  # fmt: skip
    except BaseException:
        leave_progress_stopped(seeds)
        raise
    diverged = [seed.diverged for seed in diverged_before + seeds if seed.diverged]
    if diverged:
        raise TrainingDiverged("; ".join(diverged))


def leave_progress_stopped(seeds: list[Seed]) -> None:
    """A job that ends on an error says so in the progress file of each seed it was training:
    on another host, ssvae-status would otherwise see it at work until the file goes stale."""
    for seed in seeds:
        if seed.progress is not None and seed.progress.state == TRAINING:
            seed.progress.state = INTERRUPTED
            with suppress(OutputError):  # the error on its way out says what went wrong
                seed.progress.write(seed.files.out)


def check_one_run(cfgs: list[TrainConfig], files: list[SeedFiles]) -> None:
    """A pack is seeds of one run: the same settings but the seed, each seed once."""
    if len(files) != len(cfgs):
        raise ConfigError(f"{len(cfgs)} seeds but files for {len(files)}")
    seeds = [cfg.seed for cfg in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds} names a seed twice")
    outs = [f.out for f in files]
    checkpoints = [f.checkpoint for f in files if f.checkpoint is not None]
    for option, paths in (("--out", outs), ("--checkpoint", checkpoints)):
        if len(set(paths)) != len(paths):
            raise ConfigError(f"{option}: two seeds are given the same file")
    for cfg in cfgs[1:]:
        if replace(cfg, seed=cfgs[0].seed) != cfgs[0]:
            raise ConfigError(
                f"seeds: seed {cfg.seed} has other settings than seed {cfgs[0].seed}; a job "
                "trains the seeds of one run"
            )


def new_seed(cfg: TrainConfig, files: SeedFiles, data_digest: str, device: torch.device,
             compiled: bool, result_store: store.ResultStore | None) -> Seed:  # fmt: skip
    """A seed of the job, with its verified split, what it computes and its entry in the
    store."""
    split = read_split(files.split)
    if split["seed"] != cfg.seed:
        raise ConfigError(
            f"seed: {cfg.seed} does not match the seed {split['seed']} of the split file "
            f"{files.split}"
        )
    retrain = store.pending_retrain(files.out)
    fingerprint = checkpoint.fingerprint(cfg.to_json(), retrain)
    how = computation(cfg, fingerprint, device, compiled) | {
        "labels_per_class": split["labels_per_class"]
    }
    seed = Seed(cfg, files, fingerprint, how, split, retrain=retrain)
    if result_store is not None:
        key = store.result_key(cfg.to_json(), fingerprint["code"], data_digest, split["sha256"])
        seed.stored = result_store.entry(cfg.run, cfg.seed, key)
    return seed


def check_outputs_writable(files: list[SeedFiles]) -> None:
    """Refuse, before any training, outputs that could not be written at the end."""
    for seed_files in files:
        for path in (seed_files.out, runfile.diverged_path(seed_files.out), seed_files.checkpoint):
            if path is not None:
                check_writable(path)


def recovered_from_store(seed: Seed, result_store: store.ResultStore | None, log) -> bool:
    """Whether the store held the seed's computation, sound, and no retrain was asked for: then
    its stored run file is now its run file."""
    if result_store is None or seed.retrain is not None:
        return False
    try:
        content = result_store.take(seed.stored)
    except DamagedFile as err:
        log(f"seed {seed.cfg.seed}: {err}; training it again", flush=True)
        return False
    if content is None:
        return False
    write_atomic(seed.files.out, content)
    log(f"seed {seed.cfg.seed} had already been computed: {seed.files.out} taken from the result "
        f"store ({seed.stored}), nothing trained")  # fmt: skip
    return True


def resumable_checkpoint(seed: Seed, device: torch.device, log) -> dict | None:
    """The seed's checkpoint to resume from, or None to start afresh: there is none, it is
    damaged (said in the log), or it predates the seed's retrain request. A checkpoint of other
    settings or code is refused (CheckpointMismatch)."""
    path = seed.files.checkpoint
    if path is None or not path.exists():
        return None
    try:
        return checkpoint.load(path, seed.fingerprint, device)
    except DamagedFile as err:
        log(f"seed {seed.cfg.seed}: {err}; training it from the start", flush=True)
    except checkpoint.CheckpointMismatch as err:
        if seed.retrain is None:
            raise
        log(f"seed {seed.cfg.seed}: retrain asked for; {err}, not resumed", flush=True)
    return None
