"""Train the seeds of one run, together, and write each seed's metrics file (spec section 4).

Epochs 0..E each run `steps_per_epoch` optimizer steps; after epoch e the learning rate decays,
every `eval_every` epochs (and after the last) the whole validation split is evaluated and decoder
samples are drawn, and after the last epoch the test split is evaluated once.

The seeds of a job (a pack: one seed, or several) train in one process on weights stacked along a
leading seed dimension (ssvae.nn). Nothing of a seed depends on the seeds beside it: its labeled
split, its random stream, its BatchNorm statistics, its L2 term and gradient clipping, its Adam
state, its divergence, its checkpoint and its run file are its own.
"""

import json
import os
import resource
import signal
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import ssvae
from ssvae import checkpoint, compute, data, runfile, store
from ssvae.cli import entry_point_parser
from ssvae.config import ConfigError, TrainConfig, settings_help
from ssvae.errors import InputError, UserError, exit_on_user_error
from ssvae.io import DamagedFile, check_writable, hold_lock, write_atomic
from ssvae.models.base import SemiSupervisedVAE, build_model
from ssvae.nn import N_CLASSES, Z_DIM, SeedRandom, bernoulli_draw
from ssvae.schedules import Annealing, annealing, learning_rate
from ssvae.splits import read_split

SAMPLES_PER_CLASS = 100
Z_ROWS_KEPT = 100  # the original's output_verbose keeps the last 100 rows of each key


class TrainingDiverged(UserError):
    """The training objective became non-finite."""


def diverged_path(out_path: Path) -> Path:
    """Where a diverged run keeps its metrics (metrics.h5 -> metrics.diverged.h5)."""
    return out_path.with_name(f"{out_path.stem}.diverged{out_path.suffix}")


def binarize(x: torch.Tensor, random: SeedRandom) -> torch.Tensor:
    """A fresh Bernoulli draw of every pixel, each time a batch is used (docs/original.md 1.3)."""
    return bernoulli_draw(x, x, random)


def to_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    # The original's pickle stores k/256 (docs/original.md 1.1). Torch's default float type:
    # float32, unless a test asks for float64.
    return torch.from_numpy(images).to(device=device, dtype=torch.get_default_dtype()) / 256.0


def per_seed_means(sums: dict, count: int) -> list[dict[str, float]]:
    """{name: (seeds,) sums} -> one {name: mean} per seed, read from the device at once."""
    stacked = torch.stack(list(sums.values())).double().cpu() / count  # one host sync
    return [dict(zip(sums, column, strict=True)) for column in stacked.T.tolist()]


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Each seed's metrics over a whole split, and its z statistics (None without a decoder);
    both slots get the images, binarised separately (docs/original.md 1.5)."""
    model.eval()
    seeds = model.random.seeds
    sums = defaultdict(float)
    kl_per_dim = torch.zeros(seeds, Z_DIM, device=images.device)
    last_unlabeled = None
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].expand(seeds, -1, -1)
        y = labels[start : start + batch_size].expand(seeds, -1)
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
    """Per seed, Bernoulli means for z ~ N(0, I) and classes 0..9 in blocks of 100 (docs/original.md
    4.8), as uint8: (seeds, 1000, 784)."""
    device = model.random.device
    classes = torch.eye(N_CLASSES, device=device).repeat_interleave(SAMPLES_PER_CLASS, dim=0)
    classes = classes.expand(model.random.seeds, -1, -1)
    z = model.random.randn_like(classes.new_empty(*classes.shape[:2], Z_DIM))
    means = model.decode_means(classes, z)
    return (means * 255).round().to(torch.uint8).cpu().numpy()


@dataclass
class Images:
    """The splits on the training device: pixel intensities in [0, 1), labels as int64; the
    labeled images per seed, (seeds, labeled, ...)."""

    train_x: torch.Tensor
    labeled_x: torch.Tensor
    labeled_y: torch.Tensor
    valid: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def load_images(data_path: Path, splits: list[dict], device: torch.device) -> Images:
    """The images, with each seed's labeled split (all of the same size)."""
    arrays = data.load(data_path)
    train_x = to_pixels(arrays["train_x"], device)
    for split in splits:
        out_of_range = [i for i in split["indices"] if not 0 <= i < len(train_x)]
        if out_of_range:
            raise ConfigError(
                f"split: labeled index {out_of_range[0]} is outside the {len(train_x)} "
                "training images"
            )
    if len({len(split["indices"]) for split in splits}) > 1:
        raise ConfigError("split: the seeds of a job have labeled splits of different sizes")
    labeled = torch.as_tensor([split["indices"] for split in splits], device=device)
    return Images(
        train_x=train_x,
        labeled_x=train_x[labeled],
        labeled_y=torch.as_tensor(arrays["train_y"], device=device)[labeled],
        valid=(
            to_pixels(arrays["valid_x"], device),
            torch.as_tensor(arrays["valid_y"], device=device),
        ),
        test=(
            to_pixels(arrays["test_x"], device),
            torch.as_tensor(arrays["test_y"], device=device),
        ),
    )


@dataclass
class EpochProgress:
    """Where training stands inside one epoch; per-seed tensors lead with the seed dimension
    and stay on the device."""

    epoch: int
    order: torch.Tensor  # (seeds, images): each seed's permutation of the unlabeled images
    steps_done: int = 0
    sums: torch.Tensor | None = None  # (seeds, metrics): step metrics summed, `metric_names` order
    metric_names: list[str] = field(default_factory=list)
    first_bad_step: torch.Tensor | None = None  # (seeds,): -1 while the objective is finite
    seconds: float = 0.0  # training time spent in this epoch so far

    @classmethod
    def start(cls, epoch: int, images: Images, random: SeedRandom) -> "EpochProgress":
        return cls(
            epoch=epoch,
            order=random.randperm(len(images.train_x)),
            first_bad_step=torch.full((random.seeds,), -1, device=images.train_x.device),
        )

    def of_seed(self, i: int) -> dict:
        """Seed i's part, as its checkpoint holds it (copies: a view would save every seed's)."""
        seed_rows = {"order": self.order[i].clone(), "first_bad_step": self.first_bad_step[i]}
        if self.sums is not None:
            seed_rows["sums"] = self.sums[i].clone()
        return vars(self) | seed_rows

    @classmethod
    def of_seeds(cls, parts: list[dict]) -> "EpochProgress":
        """The pack's progress from each seed's part (all at the same step)."""
        stacked = {
            name: torch.stack([part[name] for part in parts])
            for name in ("order", "first_bad_step", "sums")
            if parts[0][name] is not None
        }
        return cls(**(parts[0] | stacked))


def step_objective(model, images: Images, unlabeled_index: torch.Tensor,
                   coefficients: torch.Tensor):  # fmt: skip
    """One step's batch per seed, drawn and binarised on the device, and the model's objective
    and metrics on it: everything of a step before the backward pass, which a compiled step
    captures. `unlabeled_index` is (seeds, batch)."""
    random = model.random
    x_unlabeled = None
    if model.has_decoder:  # it learns from the unlabeled images too, in a fresh order each epoch
        x_unlabeled = binarize(images.train_x[unlabeled_index], random)
    labeled_x, labeled_y = images.labeled_x, images.labeled_y
    pick = random.randint(labeled_x.shape[1], unlabeled_index.shape[1:])
    seed_rows = torch.arange(random.seeds, device=pick.device).unsqueeze(1)
    coefs = Annealing(*coefficients.unbind())
    x_labeled = binarize(labeled_x[seed_rows, pick], random)
    result = model(x_unlabeled, x_labeled, labeled_y[seed_rows, pick], coefs)
    return result.objective, result.metrics


def seed_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each seed's 2-norm over all the tensors (seeds, ...): one foreach pass over every seed's
    row of every tensor, then (seeds,)."""
    rows = [row for tensor in tensors for row in tensor.unbind()]
    row_norms = torch.stack(torch._foreach_norm(rows)).view(len(tensors), -1)
    return torch.linalg.vector_norm(row_norms, dim=0)


@torch.no_grad()
def add_l2_term(params: list, l2: float) -> torch.Tensor:
    """Add the gradient of l2 * (sum of squared parameters), 2 * l2 * p, to every gradient and
    return each seed's parameter norm. The L2 term belongs to the summed loss, so clipping sees
    it (docs/original.md 4.3, 4.4); added here rather than through autograd, it costs 2 passes over
    the parameters instead of 6."""
    torch._foreach_add_([p.grad for p in params], params, alpha=2 * l2)
    return seed_norms(params)


@torch.no_grad()
def clip_grad_norms(params: list, max_norm: float) -> torch.Tensor:
    """Scale each seed's gradients to a 2-norm of at most max_norm, as torch's
    clip_grad_norm_ does for one (factor max_norm / (norm + 1e-6), at most 1); each seed's norm
    before clipping, (seeds,)."""
    grads = [p.grad for p in params]
    norms = seed_norms(grads)
    factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [factors.view(-1, *[1] * (g.dim() - 1)) for g in grads])
    return norms


def build_training(cfg: TrainConfig, seeds: list[int], device: torch.device):
    """The run's model for `seeds`, initialised from each seed's own stream, and its optimizer
    (elementwise, so each seed's Adam state is its own)."""
    model = build_model(
        cfg.model,
        cfg.params,
        cfg.input_dropout,
        cfg.classifier_weight,
        cfg.z_noise_std,
        seeds,
        device,
    )
    # One fused kernel for all parameters instead of a dozen tensor ops per parameter.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True
    )
    return model, optimizer


def annealing_coefficients(epoch: int, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """The coefficients of every step of an epoch, one row per step in `Annealing` field order,
    sent to the device once per epoch."""
    first = epoch * cfg.steps_per_epoch + 1
    rows = [
        astuple(annealing(step, cfg.anneal_classifier_steps))
        for step in range(first, first + cfg.steps_per_epoch)
    ]
    return torch.tensor(rows, dtype=torch.get_default_dtype(), device=device)


def training_step(model, images: Images, compiled: bool, log=print) -> compute.TrainingStep:
    """The forward and backward pass of a step, `step(unlabeled_index, coefficients)`: eager, or
    compiled (CUDA graphs on CUDA) with a fallback to eager if compiling fails."""

    def forward(unlabeled_index: torch.Tensor, coefficients: torch.Tensor):
        return step_objective(model, images, unlabeled_index, coefficients)

    on_cuda = images.train_x.device.type == "cuda"
    return compute.TrainingStep(forward, model, compiled, on_cuda, log)


def train_steps(model, optimizer, step_fn: compute.TrainingStep, images: Images,
                cfg: TrainConfig, progress: EpochProgress, stop) -> bool:  # fmt: skip
    """Run the rest of an epoch's steps for every seed of the pack, or until `stop()` says to
    halt at a step boundary; True when the epoch is complete. No host sync per step: `stop`
    reads a Python flag."""
    model.train()
    params = list(model.parameters())
    # The original's threshold, from one seed's parameter count.
    max_grad_norm = cfg.grad_norm_per_1000 * sum(p[0].numel() for p in params) / 1000
    batch = cfg.batch_size
    device = images.train_x.device
    coefficients = annealing_coefficients(progress.epoch, cfg, device)
    started = time.perf_counter()
    while progress.steps_done < cfg.steps_per_epoch and not stop():
        i = progress.steps_done
        step = progress.epoch * cfg.steps_per_epoch + i + 1
        unlabeled_index = progress.order[:, i * batch : (i + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        model_objective, metrics = step_fn(unlabeled_index, coefficients[i])
        param_norm = add_l2_term(params, cfg.l2)
        objective = model_objective + cfg.l2 * param_norm.square()
        grad_norm = clip_grad_norms(params, max_grad_norm)
        optimizer.step()

        progress.first_bad_step = torch.where(
            (progress.first_bad_step < 0) & ~torch.isfinite(objective),
            step,
            progress.first_bad_step,
        )
        metrics |= {
            "objective": objective,
            "pnorm": param_norm,
            "gnorm": grad_norm.clamp(max=max_grad_norm),  # the norm after clipping
        }
        values = torch.stack([value.detach() for value in metrics.values()], dim=1)
        if progress.sums is None:
            progress.metric_names, progress.sums = list(metrics), torch.zeros_like(values)
        progress.sums += values
        progress.steps_done += 1
    progress.seconds += time.perf_counter() - started
    return progress.steps_done == cfg.steps_per_epoch


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


class Preempted(UserError):
    """Training stopped on request (SIGTERM or SIGINT) after writing a checkpoint."""


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

    @property
    def position(self) -> tuple:
        """Where its training stands: the next epoch and the step inside it (-1: between
        epochs, its order not drawn yet); (-1, -1) before anything. Seeds train together only
        from the same position."""
        if self.saved is None:
            return (-1, -1)
        progress = self.saved["progress"]
        return (self.saved["next_epoch"], -1 if progress is None else progress["steps_done"])


def computation(cfg: TrainConfig, fingerprint: dict, device: torch.device,
                compiled: bool) -> dict:  # fmt: skip
    """What a seed computes and how: recorded in its run file."""
    return {
        "config": json.loads(cfg.to_json()),
        "code_digest": fingerprint["code"],
        **compute.versions(),
        "device": compute.device_name(device),
        "compiled_step": compiled,
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
    metrics.diverged.h5 while the others finish; TrainingDiverged is raised at the end. A seed
    whose metrics.diverged.h5 records this very computation is not trained again.
    With a result store, a seed whose computation it holds takes its run file from there, and
    each completed run file goes into it. A seed with a pending retrain request (ssvae.store)
    trains anew: the store and its diverged record stand in for nothing, and only checkpoints
    written for that request are resumed. `compiled` runs the step through torch.compile
    (CUDA graphs on CUDA)."""
    check_one_run(cfgs, files)
    check_outputs_writable(files)
    diverged_before = []
    data_digest = data.load_verified(data_path)[1]
    seeds = []
    for cfg, seed_files in zip(cfgs, files, strict=True):
        seed = new_seed(cfg, seed_files, data_digest, device, compiled, result_store)
        if seed.stored is not None:
            check_writable(seed.stored)
        if recovered_from_store(seed, result_store, log):
            continue
        kept = diverged_path(seed_files.out)
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
    groups = defaultdict(list)
    for seed in seeds:
        groups[seed.position].append(seed)
    for position in sorted(groups):
        train_group(
            groups[position], data_path, device, log, checkpoint_every, stop, compiled,
            result_store,
        )  # fmt: skip
    diverged = [seed.diverged for seed in diverged_before + seeds if seed.diverged]
    if diverged:
        raise TrainingDiverged("; ".join(diverged))


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
    how = computation(cfg, fingerprint, device, compiled)
    seed = Seed(cfg, files, fingerprint, how, split, retrain=retrain)
    if result_store is not None:
        key = store.result_key(cfg.to_json(), fingerprint["code"], data_digest, split["sha256"])
        seed.stored = result_store.entry(cfg.run, cfg.seed, key)
    return seed


def check_outputs_writable(files: list[SeedFiles]) -> None:
    """Refuse, before any training, outputs that could not be written at the end."""
    for seed_files in files:
        for path in (seed_files.out, diverged_path(seed_files.out), seed_files.checkpoint):
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


def train_group(seeds: list[Seed], data_path: Path, device: torch.device, log,
                checkpoint_every: int, stop, compiled: bool,
                result_store: store.ResultStore | None) -> None:  # fmt: skip
    """Train seeds that stand at the same step together, to the end of the run."""
    started = time.perf_counter()
    cfg = seeds[0].cfg
    names = " ".join(str(seed.cfg.seed) for seed in seeds)
    images = load_images(data_path, [seed.split for seed in seeds], device)
    if cfg.steps_per_epoch * cfg.batch_size > len(images.train_x):  # a reduced data file
        raise InputError(
            f"{data_path}: {len(images.train_x)} training images, fewer than an epoch of "
            f"{cfg.steps_per_epoch} batches of {cfg.batch_size} takes"
        )
    model, optimizer = build_training(cfg, [seed.cfg.seed for seed in seeds], device)
    n_params = sum(p[0].numel() for p in model.parameters())
    step_fn = training_step(model, images, compiled, log)
    log(
        f"{cfg.run} seed{'s' * (len(seeds) > 1)} {names}: {cfg.model}, {n_params:,} parameters "
        f"per seed, device {device}, epochs 0..{cfg.epochs} x {cfg.steps_per_epoch} steps, step "
        f"{'compiled' if compiled else 'eager'}, {torch.get_num_threads()} CPU threads"
    )
    first_epoch, progress = 0, None
    if seeds[0].saved is not None:
        saved = [seed.saved for seed in seeds]
        first_epoch = saved[0]["next_epoch"]
        progress_parts = checkpoint.restore_seeds(saved, model, optimizer)
        if progress_parts is not None:
            progress = EpochProgress.of_seeds(progress_parts)
        for seed, state in zip(seeds, saved, strict=True):
            seed.run_log, seed.wall_before = checkpoint.seed_log(state)
        where = f"step {progress.steps_done} of " if progress else ""
        log(f"seed{'s' * (len(seeds) > 1)} {names} resumed from checkpoint: {where}epoch "
            f"{first_epoch}", flush=True)  # fmt: skip

    def wall_seconds(seed: Seed) -> float:
        return seed.wall_before + time.perf_counter() - started

    def save(seed: Seed, path: Path, status: str) -> bytes:
        how = seed.computation | step_fn.how_it_ran()
        attributes = run_attributes(seed.cfg, how, n_params, status, wall_seconds(seed))
        return seed.run_log.write(path, attributes | job_attributes(seeds, started))

    def save_checkpoints(next_epoch: int) -> None:
        for i, seed in enumerate(seeds):
            if seed.files.checkpoint is None or seed.diverged:
                continue
            state = checkpoint.capture_seed(
                i,
                seed.fingerprint,
                next_epoch,
                None if progress is None else progress.of_seed(i),
                model,
                optimizer,
                seed.run_log,
                wall_seconds(seed),
            )
            checkpoint.save(seed.files.checkpoint, state)

    for epoch in range(first_epoch, cfg.epochs + 1):
        lr = learning_rate(epoch, cfg.lr, cfg.lr_decay, cfg.lr_floor)
        if progress is None:  # a resumed epoch keeps its optimizer state, lr included
            for group in optimizer.param_groups:
                group["lr"] = lr
            progress = EpochProgress.start(epoch, images, model.random)
        if not train_steps(model, optimizer, step_fn, images, cfg, progress, stop):
            stopped = f"stopped at epoch {epoch}, step {progress.steps_done}"
            if seeds[0].files.checkpoint is None:
                raise Preempted(stopped)
            save_checkpoints(epoch)
            written = [str(seed.files.checkpoint) for seed in seeds if not seed.diverged]
            raise Preempted(
                f"{stopped}; checkpoint{'s' * (len(written) > 1)} written to "
                f"{', '.join(written)}, rerun to resume"
            )
        metrics, bad_steps = epoch_means(progress, cfg, model)
        epoch_seconds = progress.seconds
        progress = None
        for seed, bad_step in zip(seeds, bad_steps, strict=True):
            if bad_step >= 0 and not seed.diverged:
                # Snakemake deletes a failed job's outputs, so what was computed goes beside.
                kept = diverged_path(seed.files.out)
                save(seed, kept, "diverged")
                store.fulfil_retrain(seed.files.out, seed.retrain)
                seed.diverged = (
                    f"{cfg.run} seed {seed.cfg.seed}: non-finite loss at epoch {epoch}, step "
                    f"{bad_step}; the epochs before it are kept in {kept}"
                )
                log(seed.diverged, flush=True)
        if all(seed.diverged for seed in seeds):
            return
        shared = {
            "hyperparameters/lr": lr,
            "hyperparameters/update_ctr": (epoch + 1) * cfg.steps_per_epoch,
            "duration": epoch_seconds,
        }
        lines = {
            seed.cfg.seed: f"epoch {epoch:3d}/{cfg.epochs}  train loss "
            f"{seed_metrics['loss']:9.2f}  acc {seed_metrics['accuracy']:.3f}"
            for seed, seed_metrics in zip(seeds, metrics, strict=True)
        }
        for seed, seed_metrics in zip(seeds, metrics, strict=True):
            seed.run_log.record("train", epoch, seed_metrics | shared)

        last_epoch = epoch == cfg.epochs
        evaluation_started = time.perf_counter()
        evaluations = {"valid": epoch % cfg.eval_every == 0 or last_epoch, "test": last_epoch}
        for split, due in evaluations.items():
            if not due:
                continue
            results = evaluate(model, *getattr(images, split), cfg.batch_size)
            for seed, (split_metrics, z_stats) in zip(seeds, results, strict=True):
                seed.run_log.record(split, epoch, split_metrics)
                accuracy = f"acc {split_metrics['accuracy']:.4f}"
                if split == "valid":
                    lines[seed.cfg.seed] += f"  valid loss {split_metrics['loss']:9.2f}  {accuracy}"
                else:
                    lines[seed.cfg.seed] += f"  test {accuracy}"
                if split == "valid" and z_stats is not None:
                    seed.run_log.record("z_stats", epoch, z_stats)
            if split == "valid" and model.has_decoder:
                for seed, grid in zip(seeds, decoder_samples(model), strict=True):
                    seed.run_log.record("samples", epoch, {"p(x)": grid})
        # Evaluation and samples (a host sync each), so that a job's time adds up from its log.
        evaluation_seconds = time.perf_counter() - evaluation_started
        for seed in seeds:
            if not seed.diverged:
                prefix = f"seed {seed.cfg.seed}  " if len(seeds) > 1 else ""
                log(
                    f"{prefix}{lines[seed.cfg.seed]}  lr {lr:.3e}  {epoch_seconds:6.1f} s "
                    f"training  {evaluation_seconds:6.1f} s evaluation",
                    flush=True,
                )
        due = checkpoint_every > 0 and (epoch + 1) % checkpoint_every == 0
        if due and not last_epoch:
            save_checkpoints(epoch + 1)
    for seed in seeds:
        if seed.diverged:
            continue
        content = save(seed, seed.files.out, "complete")
        if result_store is not None:
            result_store.put(seed.stored, content, stored_record(seed))
        store.fulfil_retrain(seed.files.out, seed.retrain)
        if seed.files.checkpoint is not None:
            seed.files.checkpoint.unlink(missing_ok=True)  # the run file now holds everything


def stored_record(seed: Seed) -> dict:
    """What the store records beside a run file, to be read by people: what it computed."""
    return {
        "run": seed.cfg.run,
        "seed": seed.cfg.seed,
        "settings": json.loads(seed.cfg.to_json()),
        "code_digest": seed.fingerprint["code"],
        "split_digest": seed.split["sha256"],
        "stored_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def job_attributes(seeds: list[Seed], started: float) -> dict:
    """What the job that writes a run file cost, and which seeds shared it."""
    # ru_maxrss is in kB on Linux.
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seeds_in_job": [seed.cfg.seed for seed in seeds],
        "job_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb,
    }


def run_attributes(cfg: TrainConfig, computation: dict, n_params: int, status: str,
                   wall_seconds: float) -> dict:  # fmt: skip
    """The run file's attributes: which run, what was computed and how, its status and time
    (the layout is in ssvae.runfile)."""
    return {
        "run": cfg.run,
        "model": cfg.model,
        "seed": cfg.seed,
        **computation,
        "n_params": n_params,
        "ssvae_version": ssvae.__version__,
        "cpu_threads": torch.get_num_threads(),
        "status": status,
        "wall_seconds": wall_seconds,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser(
        "ssvae-train",
        "Train the seeds of one run together (one seed, or a pack of several) and write each "
        "seed's metrics HDF5 file.",
        settings_help(),
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared MNIST .npz")
    parser.add_argument(
        "--run-config",
        required=True,
        help="JSON object of TrainConfig settings (run, model, seed, ...)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train these seeds together (default: the run config's seed, or else the seed of "
        "each --split file); the files below are given once per seed, in this order",
    )
    parser.add_argument(
        "--split", type=Path, nargs="+", required=True, help="labeled split JSON of each seed"
    )
    parser.add_argument("--out", type=Path, nargs="+", required=True, help="metrics .h5 to write")
    compute.add_compute_options(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        help="file for each seed's training state: written every --checkpoint-every epochs and "
        "on SIGTERM or SIGINT, resumed from when present, deleted when the run completes",
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="result store: a seed whose computation it holds takes its run file from there "
        "instead of training (unless <out stem>.retrain asks for a retrain), and every "
        "completed run file goes into it",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        help="epochs between checkpoints (0: only on SIGTERM or SIGINT)",
    )
    args = parser.parse_args(argv)
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be at least 0, not {args.checkpoint_every}")
    with exit_on_user_error("ssvae-train"):
        try:
            run_config = json.loads(args.run_config)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--run-config is not valid JSON ({err})") from None
        if not isinstance(run_config, dict):
            raise ConfigError("--run-config must be a JSON object")
        seeds = args.seeds
        if seeds is None:  # the run config's seed, or else each split's own
            has_seed = "seed" in run_config
            seeds = (
                [run_config["seed"]] if has_seed else [read_split(p)["seed"] for p in args.split]
            )
        cfgs = [TrainConfig.from_dict(run_config | {"seed": seed}) for seed in seeds]
        checkpoints = args.checkpoint or [None] * len(seeds)
        for option, paths in (("--split", args.split), ("--out", args.out),
                              ("--checkpoint", checkpoints)):  # fmt: skip
            if len(paths) != len(seeds):
                raise ConfigError(f"{option}: {len(paths)} paths for {len(seeds)} seeds")
        files = [SeedFiles(*paths) for paths in zip(args.split, args.out, checkpoints, strict=True)]
        # Before the locks: one path given twice is named as such, and an output that cannot
        # be written is named rather than its lock.
        check_one_run(cfgs, files)
        check_outputs_writable(files)
        with ExitStack() as held:
            for seed_files in files:
                held.enter_context(hold_lock(seed_files.lock, f"training {seed_files.out}"))
            log = attempts_log([seed_files.out for seed_files in files])
            device, compiled = compute.apply_compute_options(args)
            train_pack(
                cfgs,
                args.data,
                files,
                device,
                log,
                checkpoint_every=args.checkpoint_every,
                stop=stop_on_signals(),
                compiled=compiled,
                result_store=None if args.store is None else store.ResultStore(args.store),
            )


def attempts_log_path(out_path: Path) -> Path:
    """metrics.h5 -> metrics.attempts.log: every attempt's log lines, which a job's own log
    (rewritten by each attempt) does not keep."""
    return out_path.with_name(f"{out_path.stem}.attempts.log")


def attempts_log(out_paths: list[Path]):
    """A `log` that prints and also appends each line to every seed's attempts log, which this
    attempt opens with a line saying when and where it started."""
    paths = [attempts_log_path(out) for out in out_paths]
    for path in paths:
        check_writable(path)

    def log(line: str, flush: bool = False) -> None:
        print(line, flush=flush)
        for path in list(paths):
            try:
                with path.open("a") as attempts:
                    attempts.write(line + "\n")
            except OSError as err:  # a full disk must not stop training for a copy of the log
                paths.remove(path)
                print(f"{path}: cannot append ({err.strerror or err}); not kept there", flush=True)

    started = datetime.now(UTC).isoformat(timespec="seconds")
    for path in paths:
        with path.open("a") as attempts:
            attempts.write(f"--- attempt started {started} (process {os.getpid()})\n")
    return log


def stop_on_signals():
    """A `stop()` for `train` that turns true on SIGTERM (what SLURM sends before it kills a job
    at its time limit or on preemption) or SIGINT (Ctrl-C): training finishes its step, writes
    a checkpoint and exits. A second Ctrl-C interrupts at once."""
    requested = threading.Event()

    def on_sigint(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
    signal.signal(signal.SIGINT, on_sigint)
    return requested.is_set
