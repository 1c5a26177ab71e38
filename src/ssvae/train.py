"""Train one (run, seed) and write its metrics file (spec section 4).

Epochs 0..E each run `steps_per_epoch` optimizer steps; after epoch e the learning rate decays,
every `eval_every` epochs (and after the last) the whole validation split is evaluated and decoder
samples are drawn, and after the last epoch the test split is evaluated once.
"""

import json
import signal
import threading
import time
from collections import defaultdict
from dataclasses import astuple, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import ssvae
from ssvae import checkpoint, compute, data, runfile
from ssvae.cli import entry_point_parser
from ssvae.config import ConfigError, TrainConfig, settings_help
from ssvae.errors import UserError, exit_on_user_error
from ssvae.io import check_writable, link_atomic
from ssvae.models import SemiSupervisedVAE, build_model
from ssvae.nn import N_CLASSES, Z_DIM, bernoulli_draw
from ssvae.schedules import Annealing, annealing, learning_rate
from ssvae.splits import read_split

SAMPLES_PER_CLASS = 100
Z_ROWS_KEPT = 100  # the original's output_verbose keeps the last 100 rows of each key


class TrainingDiverged(UserError):
    """The training objective became non-finite."""


def diverged_path(out_path: Path) -> Path:
    """Where a diverged run keeps its metrics (metrics.h5 -> metrics.diverged.h5)."""
    return out_path.with_name(f"{out_path.stem}.diverged{out_path.suffix}")


def binarize(x: torch.Tensor) -> torch.Tensor:
    """A fresh Bernoulli draw of every pixel, each time a batch is used (spec 1.3)."""
    return bernoulli_draw(x, x)


def to_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    # The original's pickle stores k/256 (spec 1.1). Torch's default float type: float32, unless a
    # test asks for float64.
    return torch.from_numpy(images).to(device=device, dtype=torch.get_default_dtype()) / 256.0


def _means(sums: dict, count: int) -> dict[str, float]:
    stacked = torch.stack(list(sums.values())).double().cpu() / count  # one host sync
    return dict(zip(sums, stacked.tolist(), strict=True))


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Metrics over a whole split; both slots get the images, binarised separately (spec 1.5)."""
    model.eval()
    sums = defaultdict(float)
    kl_per_dim = torch.zeros(Z_DIM, device=images.device)
    last_unlabeled = None
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        x_unlabeled = binarize(x) if model.has_decoder else None
        result = model(x_unlabeled, binarize(x), y, Annealing())
        for name, value in result.metrics.items():
            sums[name] = sums[name] + value * len(x)
        if result.unlabeled is not None:
            kl_per_dim += result.unlabeled.kl_z_per_dim.sum(0)
            last_unlabeled = result.unlabeled
    metrics = _means(sums, len(images))
    z_stats = None
    if last_unlabeled is not None:
        z_stats = {
            "mu_last_batch": last_unlabeled.mu[-Z_ROWS_KEPT:].cpu().numpy(),
            "logcov2_last_batch": last_unlabeled.logcov2[-Z_ROWS_KEPT:].cpu().numpy(),
            "kl_per_dim_mean": (kl_per_dim / len(images)).cpu().numpy(),
        }
    return metrics, z_stats


def decoder_samples(model: SemiSupervisedVAE, device: torch.device) -> np.ndarray:
    """Bernoulli means for z ~ N(0, I) and classes 0..9 in blocks of 100 (spec 4.8), as uint8."""
    classes = torch.eye(N_CLASSES, device=device).repeat_interleave(SAMPLES_PER_CLASS, dim=0)
    z = torch.randn(len(classes), Z_DIM, device=device)
    means = model.decode_means(classes, z)
    return (means * 255).round().to(torch.uint8).cpu().numpy()


@dataclass
class Images:
    """The splits on the training device: pixel intensities in [0, 1), labels as int64."""

    train_x: torch.Tensor
    labeled_x: torch.Tensor
    labeled_y: torch.Tensor
    valid: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def load_images(data_path: Path, split: dict, device: torch.device) -> Images:
    arrays = data.load(data_path)
    train_x = to_pixels(arrays["train_x"], device)
    out_of_range = [i for i in split["indices"] if not 0 <= i < len(train_x)]
    if out_of_range:
        raise ConfigError(
            f"split: labeled index {out_of_range[0]} is outside the {len(train_x)} training images"
        )
    labeled = torch.as_tensor(split["indices"], device=device)
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
    """Where training stands inside one epoch; metric sums stay on the device."""

    epoch: int
    order: torch.Tensor  # this epoch's permutation of the unlabeled images
    steps_done: int = 0
    sums: torch.Tensor | None = None  # the step metrics, summed, in `metric_names` order
    metric_names: list[str] = field(default_factory=list)
    first_bad_step: torch.Tensor | None = None
    seconds: float = 0.0  # training time spent in this epoch so far

    @classmethod
    def start(cls, epoch: int, images: Images) -> "EpochProgress":
        device = images.train_x.device
        return cls(
            epoch=epoch,
            order=torch.randperm(len(images.train_x), device=device),
            first_bad_step=torch.tensor(-1, device=device),
        )


def step_objective(model, images: Images, unlabeled_index: torch.Tensor,
                   coefficients: torch.Tensor):  # fmt: skip
    """One step's batch, drawn and binarised on the device, and the model's objective and metrics
    on it: everything of a step before the backward pass, which a compiled step captures."""
    x_unlabeled = None
    if model.has_decoder:  # it learns from the unlabeled images too, in a fresh order each epoch
        x_unlabeled = binarize(images.train_x[unlabeled_index])
    labeled_x, labeled_y = images.labeled_x, images.labeled_y
    pick = torch.randint(len(labeled_x), unlabeled_index.shape, device=labeled_x.device)
    coefs = Annealing(*coefficients.unbind())
    result = model(x_unlabeled, binarize(labeled_x[pick]), labeled_y[pick], coefs)
    return result.objective, result.metrics


@torch.no_grad()
def add_l2_term(params: list, l2: float) -> torch.Tensor:
    """Add the gradient of l2 * (sum of squared parameters), 2 * l2 * p, to every gradient and
    return the parameters' norm. The L2 term belongs to the summed loss, so clipping sees it
    (spec 4.3, 4.4); added here rather than through autograd, it costs 2 passes over the
    parameters instead of 6."""
    torch._foreach_add_([p.grad for p in params], params, alpha=2 * l2)
    return torch.nn.utils.get_total_norm(params)


def build_training(cfg: TrainConfig, device: torch.device):
    """The run's model, initialised from the seed's torch RNG state, and its optimizer."""
    model = build_model(
        cfg.model, cfg.params, cfg.input_dropout, cfg.classifier_weight, cfg.z_noise_std
    ).to(device)
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
    """Run the rest of an epoch's steps, or until `stop()` says to halt at a step boundary;
    True when the epoch is complete. No host sync per step: `stop` reads a Python flag."""
    model.train()
    params = list(model.parameters())
    max_grad_norm = cfg.grad_norm_per_1000 * sum(p.numel() for p in params) / 1000
    batch = cfg.batch_size
    device = images.train_x.device
    coefficients = annealing_coefficients(progress.epoch, cfg, device)
    started = time.perf_counter()
    while progress.steps_done < cfg.steps_per_epoch and not stop():
        i = progress.steps_done
        step = progress.epoch * cfg.steps_per_epoch + i + 1
        unlabeled_index = progress.order[i * batch : (i + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        model_objective, metrics = step_fn(unlabeled_index, coefficients[i])
        param_norm = add_l2_term(params, cfg.l2)
        objective = model_objective + cfg.l2 * param_norm.square()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
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
        values = torch.stack([value.detach() for value in metrics.values()])
        if progress.sums is None:
            progress.metric_names, progress.sums = list(metrics), torch.zeros_like(values)
        progress.sums += values
        progress.steps_done += 1
    progress.seconds += time.perf_counter() - started
    return progress.steps_done == cfg.steps_per_epoch


def epoch_means(progress: EpochProgress, cfg: TrainConfig, model):
    """The epoch's metric means, read from the device once."""
    if progress.first_bad_step.item() >= 0:
        raise TrainingDiverged(
            f"{cfg.run} seed {cfg.seed}: non-finite loss at epoch {progress.epoch}, "
            f"step {progress.first_bad_step.item()}"
        )
    means = (progress.sums.double() / cfg.steps_per_epoch).tolist()  # the one host sync
    metrics = dict(zip(progress.metric_names, means, strict=True))
    if model.has_decoder:  # the original's MLP has no annealing variables to log
        coefficients = annealing_coefficients(progress.epoch, cfg, torch.device("cpu"))
        means = Annealing(*coefficients.double().mean(0).tolist())
        for name, mean in vars(means).items():
            metrics[f"hyperparameters/annealing/{name}"] = mean
        # Linear in the coefficients, so the epoch mean of each is its value at their means.
        for name, value in model.logged_hyperparameters(means).items():
            metrics[f"hyperparameters/{name}"] = value
    return metrics


class Preempted(UserError):
    """Training stopped on request (SIGTERM or SIGINT) after writing a checkpoint."""


def train(cfg: TrainConfig, data_path: Path, split_path: Path, out_path: Path,
          device: torch.device, log=print, checkpoint_path: Path | None = None,
          checkpoint_every: int = 0, stop=lambda: False,
          compiled: bool = False) -> None:  # fmt: skip
    """Train and write the run file. With `checkpoint_path`, the full training state goes there
    every `checkpoint_every` epochs and when `stop()` turns true (then Preempted is raised), and
    a run that finds a checkpoint from the same settings and code resumes from it. `compiled`
    runs the step through torch.compile (CUDA graphs on CUDA)."""
    run_started = time.perf_counter()
    # Outputs that could not be written at the end are refused before any training.
    for path in (out_path, diverged_path(out_path), checkpoint_path):
        if path is not None:
            check_writable(path)
    expected = checkpoint.fingerprint(cfg.to_json())
    # What the run computes and how: recorded in the run file; a finished copy of a run file
    # stands in for training only where all of it is the same.
    computation = {
        "config": json.loads(cfg.to_json()),
        "code_digest": expected["code"],
        **compute.versions(),
        "device": compute.device_name(device),
        "compiled_step": compiled,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    finished_copy = (
        None if checkpoint_path is None else checkpoint.finished_copy_path(checkpoint_path)
    )
    if finished_copy is not None and finished_copy.exists():
        if runfile.records(finished_copy, computation):
            link_atomic(finished_copy, out_path)
            log(f"this run had already completed: {out_path} recovered from {finished_copy}")
            return
        finished_copy.unlink()  # another computation's result, superseded by this run
    torch.manual_seed(cfg.seed)
    split = read_split(split_path)
    if split["seed"] != cfg.seed:
        raise ConfigError(f"seed: {cfg.seed} does not match the split file's seed {split['seed']}")
    images = load_images(data_path, split, device)
    if cfg.steps_per_epoch * cfg.batch_size > len(images.train_x):
        raise ConfigError(
            f"steps_per_epoch: {cfg.steps_per_epoch} batches of {cfg.batch_size} exceed the "
            f"{len(images.train_x)} training images"
        )
    model, optimizer = build_training(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    step_fn = training_step(model, images, compiled, log)
    log(
        f"{cfg.run} seed {cfg.seed}: {cfg.model}, {n_params:,} parameters, device {device}, "
        f"epochs 0..{cfg.epochs} x {cfg.steps_per_epoch} steps, step "
        f"{'compiled' if compiled else 'eager'}, {torch.get_num_threads()} CPU threads"
    )
    run_log, first_epoch, progress, wall_before = runfile.RunLog(), 0, None, 0.0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = checkpoint.load(checkpoint_path, expected, device)
        run_log, first_epoch, saved_progress, wall_before = checkpoint.restore(
            state, model, optimizer
        )
        if saved_progress is not None:
            progress = EpochProgress(**saved_progress)
        where = f"step {progress.steps_done} of " if progress else ""
        log(f"resumed from {checkpoint_path}: {where}epoch {first_epoch}", flush=True)

    def wall_seconds() -> float:
        return wall_before + time.perf_counter() - run_started

    def save(path: Path, status: str) -> None:
        how = computation | step_fn.how_it_ran()
        run_log.write(path, run_attributes(cfg, how, n_params, status, wall_seconds()))

    def save_checkpoint(next_epoch: int) -> None:
        state = checkpoint.capture(
            expected, next_epoch, progress, model, optimizer, run_log, wall_seconds()
        )
        checkpoint.save(checkpoint_path, state)

    for epoch in range(first_epoch, cfg.epochs + 1):
        lr = learning_rate(epoch, cfg.lr, cfg.lr_decay, cfg.lr_floor)
        if progress is None:  # a resumed epoch keeps its optimizer state, lr included
            for group in optimizer.param_groups:
                group["lr"] = lr
            progress = EpochProgress.start(epoch, images)
        if not train_steps(model, optimizer, step_fn, images, cfg, progress, stop):
            if checkpoint_path is None:
                raise Preempted(f"stopped at epoch {epoch}, step {progress.steps_done}")
            save_checkpoint(epoch)
            raise Preempted(
                f"stopped at epoch {epoch}, step {progress.steps_done}; checkpoint written to "
                f"{checkpoint_path}, rerun to resume"
            )
        try:
            metrics = epoch_means(progress, cfg, model)
        except TrainingDiverged as err:
            # Snakemake deletes a failed job's output, so what was computed goes beside it.
            kept = diverged_path(out_path)
            save(kept, "diverged")
            raise TrainingDiverged(f"{err}; the epochs before it are kept in {kept}") from None
        epoch_seconds = progress.seconds
        progress = None
        metrics |= {
            "hyperparameters/lr": lr,
            "hyperparameters/update_ctr": (epoch + 1) * cfg.steps_per_epoch,
            "duration": epoch_seconds,
        }
        run_log.record("train", epoch, metrics)
        line = f"epoch {epoch:3d}/{cfg.epochs}  train loss {metrics['loss']:9.2f}"
        line += f"  acc {metrics['accuracy']:.3f}"

        last_epoch = epoch == cfg.epochs
        evaluation_started = time.perf_counter()
        if epoch % cfg.eval_every == 0 or last_epoch:
            valid_metrics, z_stats = evaluate(model, *images.valid, cfg.batch_size)
            run_log.record("valid", epoch, valid_metrics)
            line += f"  valid loss {valid_metrics['loss']:9.2f}"
            line += f"  acc {valid_metrics['accuracy']:.4f}"
            if model.has_decoder:
                run_log.record("z_stats", epoch, z_stats)
                run_log.record("samples", epoch, {"p(x)": decoder_samples(model, device)})
        if last_epoch:
            test_metrics, _ = evaluate(model, *images.test, cfg.batch_size)
            run_log.record("test", epoch, test_metrics)
            line += f"  test acc {test_metrics['accuracy']:.4f}"
        line += f"  lr {lr:.3e}  {epoch_seconds:6.1f} s training"
        # Evaluation and samples (a host sync each), so that a job's time adds up from its log.
        evaluation_seconds = time.perf_counter() - evaluation_started
        log(f"{line}  {evaluation_seconds:6.1f} s evaluation", flush=True)
        due = checkpoint_every > 0 and (epoch + 1) % checkpoint_every == 0
        if checkpoint_path is not None and due and not last_epoch:
            save_checkpoint(epoch + 1)
    save(out_path, "complete")
    if checkpoint_path is not None:
        link_atomic(out_path, finished_copy)
        checkpoint_path.unlink(missing_ok=True)  # the run file now holds everything


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
        "ssvae-train", "Train one (run, seed) and write its metrics HDF5 file.", settings_help()
    )
    parser.add_argument("--data", type=Path, required=True, help="prepared MNIST .npz")
    parser.add_argument("--split", type=Path, required=True, help="labeled split JSON of the seed")
    parser.add_argument(
        "--run-config",
        required=True,
        help="JSON object of TrainConfig settings (run, model, seed, ...)",
    )
    parser.add_argument("--out", type=Path, required=True, help="metrics .h5 to write")
    compute.add_compute_options(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="file for the training state: written every --checkpoint-every epochs and on "
        "SIGTERM or SIGINT, resumed from when present, deleted when the run completes (which "
        "leaves a finished copy of the run file beside it, <stem>.finished.h5)",
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
            cfg = TrainConfig.from_dict(json.loads(args.run_config))
        except json.JSONDecodeError as err:
            raise ConfigError(f"--run-config is not valid JSON ({err})") from None
        device, compiled = compute.apply_compute_options(args)
        stop = stop_on_signals()
        train(
            cfg,
            args.data,
            args.split,
            args.out,
            device,
            checkpoint_path=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            stop=stop,
            compiled=compiled,
        )


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
