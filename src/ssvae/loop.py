"""The epoch loop of a group: seeds that stand at the same step train together to the end of the
run (docs/original.md 4.6). Epochs 0..E each run `steps_per_epoch` optimizer steps; after epoch e
the learning rate decays, every `eval_every` epochs (and after the last) the whole validation
split is evaluated and decoder samples are drawn, and after the last epoch the test split is
evaluated once. Each seed's run log records it all; its run file is written at the end."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ssvae import checkpoint, compute, runfile, store
from ssvae.config import TrainConfig
from ssvae.errors import UserError
from ssvae.images import Images, binarize, load_images
from ssvae.io import OutputError
from ssvae.models.base import Model, SemiSupervisedVAE
from ssvae.nn import N_CLASSES, Z_DIM
from ssvae.progress import DIVERGED, DONE, INTERRUPTED, Progress, duration
from ssvae.schedules import Annealing, learning_rate
from ssvae.step import (
    EpochProgress,
    annealing_coefficients,
    build_training,
    train_steps,
    training_step,
)

if TYPE_CHECKING:
    from ssvae.job import Seed

SAMPLES_PER_CLASS = 100
Z_ROWS_KEPT = 100  # the original's output_verbose keeps the last 100 rows of each key


class Preempted(UserError):
    """Training stopped on request (SIGTERM or SIGINT) after writing a checkpoint."""


@dataclass
class Group:
    """Seeds at one step that train together: the model holding their stacked weights, its
    optimizer and step, and when this attempt began."""

    seeds: list[Seed]
    model: Model
    optimizer: torch.optim.Optimizer
    step_fn: compute.TrainingStep
    started: float  # time.perf_counter() when the group began
    log: Callable
    first_epoch: int = 0  # the epoch this attempt began in
    progress_unwritable: bool = False  # said once in the log

    @property
    def n_params(self) -> int:
        """Parameters of one seed."""
        return sum(p[0].numel() for p in self.model.parameters())

    def wall_seconds(self, seed: Seed) -> float:
        return seed.wall_before + time.perf_counter() - self.started

    def write_run_file(self, seed: Seed, path: Path, status: str) -> bytes:
        how = seed.computation | self.step_fn.how_it_ran()
        cfg = seed.cfg
        attributes = runfile.run_attributes(cfg.run, cfg.model, cfg.seed, how, self.n_params,
                                            status, self.wall_seconds(seed),
                                            torch.get_num_threads())  # fmt: skip
        seeds_in_job = [seed.cfg.seed for seed in self.seeds]
        job = runfile.job_attributes(seeds_in_job, time.perf_counter() - self.started)
        return seed.run_log.write(path, attributes | job)

    def save_checkpoints(self, next_epoch: int, progress: EpochProgress | None) -> list[str]:
        """Each training seed's state to its checkpoint file; the files written."""
        written = []
        for i, seed in enumerate(self.seeds):
            if seed.files.checkpoint is None or seed.diverged:
                continue
            seed_progress = None if progress is None else progress.of_seed(i)
            state = checkpoint.capture_seed(i, seed.fingerprint, next_epoch, seed_progress,
                                            self.model, self.optimizer, seed.run_log,
                                            self.wall_seconds(seed))  # fmt: skip
            checkpoint.save(seed.files.checkpoint, state)
            written.append(str(seed.files.checkpoint))
            seed.progress.checkpoint_epoch = next_epoch
            seed.progress.checkpoint_step = 0 if progress is None else progress.steps_done
            self.report_progress(seed)
        return written

    def report_progress(self, seed: Seed) -> None:
        """The seed's progress file, rewritten. It is for people watching (ssvae-status): a
        file that cannot be written (a full disk) is said once in the log, and training goes on
        to fail, if it must, where its results are written."""
        try:
            seed.progress.write(seed.files.out)
        except OutputError as err:
            if not self.progress_unwritable:
                self.log(f"{err}; ssvae-status will not see where this job stands", flush=True)
            self.progress_unwritable = True

    def start_progress(self, first_epoch: int) -> None:
        """Each seed's progress file says that this process trains it, from `first_epoch`."""
        for seed in self.seeds:
            cfg = seed.cfg
            seed.progress = Progress(cfg.run, cfg.seed, cfg.epochs, epoch=first_epoch - 1,
                                     seeds_in_job=len(self.seeds))  # fmt: skip
            if seed.saved is not None:  # the checkpoint it resumed from stands until replaced
                seed.progress.checkpoint_epoch = seed.saved["next_epoch"]
                progress = seed.saved["progress"]
                seed.progress.checkpoint_step = 0 if progress is None else progress["steps_done"]
            self.note_validation(seed)
            self.report_progress(seed)
        self.first_epoch = first_epoch

    def epoch_done(self, epoch: int) -> float:
        """Each training seed's progress file after `epoch`; the group's training time left at
        this attempt's rate (seconds)."""
        per_epoch = (time.perf_counter() - self.started) / (epoch - self.first_epoch + 1)
        for seed in self.seeds:
            if not seed.diverged:
                seed.progress.epoch, seed.progress.seconds_per_epoch = epoch, per_epoch
                self.note_validation(seed)
                self.report_progress(seed)
        return (self.seeds[0].cfg.epochs - epoch) * per_epoch

    @staticmethod
    def note_validation(seed: Seed) -> None:
        valid = seed.run_log.history["valid"]
        if valid["epoch"]:
            seed.progress.valid_epoch = valid["epoch"][-1]
            seed.progress.valid_accuracy = valid["accuracy"][-1]


def train_group(seeds: list[Seed], arrays: dict[str, np.ndarray], device: torch.device, log,
                checkpoint_every: int, stop, compiled: bool,
                result_store: store.ResultStore | None) -> None:  # fmt: skip
    """Train seeds that stand at the same step together, to the end of the run, and write each
    one's run file (into the result store too, with one)."""
    started = time.perf_counter()
    cfg = seeds[0].cfg
    images = load_images(arrays, [seed.split for seed in seeds], device)
    model, optimizer = build_training(cfg, [seed.cfg.seed for seed in seeds], device)
    step_fn = training_step(model, images, compiled, log)
    group = Group(seeds, model, optimizer, step_fn, started, log)
    step = "compiled" if compiled else "eager"
    log(f"{cfg.run} {seed_names(seeds)}: {cfg.model}, {group.n_params:,} parameters per seed, "
        f"device {device}, epochs 0..{cfg.epochs} x {cfg.steps_per_epoch} steps, step {step}, "
        f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    first_epoch, progress = resume(group, log)
    group.start_progress(first_epoch)
    for epoch in range(first_epoch, cfg.epochs + 1):
        lr = learning_rate(epoch, cfg.lr, cfg.lr_decay, cfg.lr_floor)
        if progress is None:  # a resumed epoch keeps its optimizer state, lr included
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            progress = EpochProgress.start(epoch, images, model.random)
        if not train_steps(model, optimizer, group.step_fn, images, cfg, progress, stop):
            preempt(group, progress)
        metrics, bad_steps = epoch_means(progress, cfg, model)
        mark_diverged(group, epoch, bad_steps, log)
        if all(seed.diverged for seed in seeds):
            return
        lines = record_epoch(group, epoch, metrics, lr, progress.seconds)
        evaluation_started = time.perf_counter()
        evaluate_and_record(group, images, epoch, lines)
        # Evaluation and samples (a host sync each), so that a job's time adds up from its log.
        timing = (f"lr {lr:.3e}  {progress.seconds:6.1f} s training  "
                  f"{time.perf_counter() - evaluation_started:6.1f} s evaluation  "
                  f"{duration(group.epoch_done(epoch))} left")  # fmt: skip
        for seed in seeds:
            if not seed.diverged:
                prefix = f"seed {seed.cfg.seed}  " if len(seeds) > 1 else ""
                log(f"{prefix}{lines[seed.cfg.seed]}  {timing}", flush=True)
        progress = None
        if checkpoint_every > 0 and (epoch + 1) % checkpoint_every == 0 and epoch < cfg.epochs:
            group.save_checkpoints(epoch + 1, None)
    write_results(group, result_store)


def seed_names(seeds: list[Seed]) -> str:
    """'seeds 1 2' (or 'seed 1') for the log."""
    names = " ".join(str(seed.cfg.seed) for seed in seeds)
    return f"seed{'s' * (len(seeds) > 1)} {names}"


def resume(group: Group, log) -> tuple[int, EpochProgress | None]:
    """The epoch to start from and the progress inside it: those of the group's checkpoints,
    restored into its model and optimizer, or (0, None) for a fresh start."""
    seeds = group.seeds
    if seeds[0].saved is None:
        return 0, None
    saved = [seed.saved for seed in seeds]
    progress_parts = checkpoint.restore_seeds(saved, group.model, group.optimizer)
    progress = None if progress_parts is None else EpochProgress.of_seeds(progress_parts)
    for seed, state in zip(seeds, saved, strict=True):
        seed.run_log, seed.wall_before = checkpoint.seed_log(state)
    where = f"step {progress.steps_done} of " if progress else ""
    log(f"{seed_names(seeds)} resumed from checkpoint: {where}epoch {saved[0]['next_epoch']}",
        flush=True)  # fmt: skip
    return saved[0]["next_epoch"], progress


def preempt(group: Group, progress: EpochProgress) -> None:
    """Stop where `stop()` asked, writing the checkpoints to resume from."""
    stopped = f"stopped at epoch {progress.epoch}, step {progress.steps_done}"
    for seed in group.seeds:
        if not seed.diverged:
            seed.progress.state = INTERRUPTED
            group.report_progress(seed)
    if group.seeds[0].files.checkpoint is None:
        raise Preempted(stopped)
    written = group.save_checkpoints(progress.epoch, progress)
    raise Preempted(
        f"{stopped}; checkpoint{'s' * (len(written) > 1)} written to {', '.join(written)}, "
        "rerun to resume"
    )


def mark_diverged(group: Group, epoch: int, bad_steps: list[int], log) -> None:
    """A seed whose objective went non-finite this epoch stops: what it logged is kept beside
    its run file (snakemake deletes a failed job's outputs), and the others go on."""
    for seed, bad_step in zip(group.seeds, bad_steps, strict=True):
        if bad_step < 0 or seed.diverged:
            continue
        kept = runfile.diverged_path(seed.files.out)
        group.write_run_file(seed, kept, "diverged")
        store.fulfil_retrain(seed.files.out, seed.retrain)
        seed.diverged = (
            f"{seed.cfg.run} seed {seed.cfg.seed}: non-finite loss at epoch {epoch}, step "
            f"{bad_step}; the epochs before it are kept in {kept}"
        )
        seed.progress.state, seed.progress.diverged_at = DIVERGED, f"epoch {epoch}, step {bad_step}"
        group.report_progress(seed)
        log(seed.diverged, flush=True)


def record_epoch(group: Group, epoch: int, metrics: list[dict], lr: float,
                 seconds: float) -> dict[int, str]:  # fmt: skip
    """Each seed's epoch means into its run log; its log line so far, by seed."""
    cfg = group.seeds[0].cfg
    shared = {
        "hyperparameters/lr": lr,
        "hyperparameters/update_ctr": (epoch + 1) * cfg.steps_per_epoch,
        "duration": seconds,
    }
    lines = {}
    for seed, seed_metrics in zip(group.seeds, metrics, strict=True):
        seed.run_log.record("train", epoch, seed_metrics | shared)
        loss, accuracy = seed_metrics["loss"], seed_metrics["accuracy"]
        lines[seed.cfg.seed] = (
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {loss:9.2f}  acc {accuracy:.3f}"
        )
    return lines


def evaluate_and_record(group: Group, images: Images, epoch: int, lines: dict[int, str]) -> None:
    """The evaluations due after `epoch` (validation with z statistics and decoder samples,
    and after the last epoch the test split), into each seed's run log and log line."""
    cfg, model = group.seeds[0].cfg, group.model
    last_epoch = epoch == cfg.epochs
    evaluations = {"valid": epoch % cfg.eval_every == 0 or last_epoch, "test": last_epoch}
    for split in (split for split, due in evaluations.items() if due):
        results = evaluate(model, *getattr(images, split), cfg.batch_size)
        for seed, (split_metrics, z_stats) in zip(group.seeds, results, strict=True):
            seed.run_log.record(split, epoch, split_metrics)
            accuracy = f"acc {split_metrics['accuracy']:.4f}"
            if split == "valid":
                lines[seed.cfg.seed] += f"  valid loss {split_metrics['loss']:9.2f}  {accuracy}"
            else:
                lines[seed.cfg.seed] += f"  test {accuracy}"
            if split == "valid" and z_stats is not None:
                seed.run_log.record("z_stats", epoch, z_stats)
        if split == "valid" and model.has_decoder:
            for seed, grid in zip(group.seeds, decoder_samples(model), strict=True):
                seed.run_log.record("samples", epoch, {"p(x)": grid})


def write_results(group: Group, result_store: store.ResultStore | None) -> None:
    """Each completed seed's run file, into the store too; its retrain request is answered and
    its checkpoint, which the run file now supersedes, deleted."""
    for seed in group.seeds:
        if seed.diverged:
            continue
        content = group.write_run_file(seed, seed.files.out, "complete")
        if result_store is not None:
            result_store.put(seed.stored, content, seed.stored_record())
        store.fulfil_retrain(seed.files.out, seed.retrain)
        if seed.files.checkpoint is not None:
            seed.files.checkpoint.unlink(missing_ok=True)
        seed.progress.state, seed.progress.checkpoint_epoch = DONE, None
        group.report_progress(seed)


def epoch_means(progress: EpochProgress, cfg: TrainConfig, model):
    """Each seed's epoch metric means, read from the device once, and the step at which its
    objective first went non-finite (-1: it did not)."""
    sums = (progress.sums.double() / cfg.steps_per_epoch).tolist()  # the one host sync
    bad_steps = progress.first_bad_step.tolist()
    logged = {}
    if model.has_decoder:  # the original's MLP has no annealing variables to log
        coefficients = annealing_coefficients(progress.epoch, cfg, torch.device("cpu"))
        means = Annealing(*coefficients.double().mean(0).tolist())
        for name, mean in vars(means).items():
            logged[f"hyperparameters/annealing/{name}"] = mean
        # Linear in the coefficients, so the epoch mean of each is its value at their means.
        for name, value in model.logged_hyperparameters(means).items():
            logged[f"hyperparameters/{name}"] = value
    metrics = [dict(zip(progress.metric_names, row, strict=True)) | logged for row in sums]
    return metrics, bad_steps


def per_seed_means(sums: dict, count: int) -> list[dict[str, float]]:
    """{name: (seeds,) sums} -> one {name: mean} per seed, read from the device at once."""
    stacked = torch.stack(list(sums.values())).double().cpu() / count  # one host sync
    return [dict(zip(sums, column, strict=True)) for column in stacked.T.tolist()]


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Each seed's metrics over a whole split, and its z statistics (None without a decoder);
    both slots get the images, binarised separately (docs/original.md 1.5)."""
    model.eval()
    n_seeds = model.random.n_seeds
    sums = defaultdict(float)
    kl_per_dim = torch.zeros(n_seeds, Z_DIM, device=images.device)
    last_unlabeled = None
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].expand(n_seeds, -1, -1)
        y = labels[start : start + batch_size].expand(n_seeds, -1)
        x_unlabeled = binarize(x, model.random) if model.has_decoder else None
        result = model(x_unlabeled, binarize(x, model.random), y, Annealing())
        for name, value in result.metrics.items():
            sums[name] = sums[name] + value * x.shape[1]
        if result.unlabeled is not None:
            kl_per_dim += result.unlabeled.kl_z_per_dim.sum(1)
            last_unlabeled = result.unlabeled
    metrics = per_seed_means(sums, len(images))
    if last_unlabeled is None:
        return [(seed_metrics, None) for seed_metrics in metrics]
    mu = last_unlabeled.mu[:, -Z_ROWS_KEPT:].cpu().numpy()
    logcov2 = last_unlabeled.logcov2[:, -Z_ROWS_KEPT:].cpu().numpy()
    kl_mean = (kl_per_dim / len(images)).cpu().numpy()
    return [
        (seed_metrics, {"mu_last_batch": m, "logcov2_last_batch": c, "kl_per_dim_mean": k})
        for seed_metrics, m, c, k in zip(metrics, mu, logcov2, kl_mean, strict=True)
    ]


def decoder_samples(model: SemiSupervisedVAE) -> np.ndarray:
    """Per seed, Bernoulli means for z ~ N(0, I) and classes 0..9 in blocks of 100
    (docs/original.md 4.8), as uint8: (seeds, 1000, 784)."""
    device = model.random.device
    classes = torch.eye(N_CLASSES, device=device).repeat_interleave(SAMPLES_PER_CLASS, dim=0)
    classes = classes.expand(model.random.n_seeds, -1, -1)
    z = model.random.randn_like(classes.new_empty(*classes.shape[:2], Z_DIM))
    means = model.decode_means(classes, z)
    return (means * 255).round().to(torch.uint8).cpu().numpy()
