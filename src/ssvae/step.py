"""One training step of the seeds that train together: each seed's batch, drawn and binarised on
the device, the model's objective on it, the backward pass, each seed's own L2 term and gradient
clipping, and Adam (docs/original.md 4.1-4.7); and the steps of an epoch, which a checkpoint may
interrupt at any step boundary."""

import time
from dataclasses import astuple, dataclass, field

import torch

from ssvae import compute
from ssvae.config import TrainConfig
from ssvae.images import Images, binarize
from ssvae.models.base import build_model
from ssvae.nn import SeedRandom
from ssvae.schedules import Annealing, annealing


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
            first_bad_step=torch.full((random.n_seeds,), -1, device=images.train_x.device),
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
    seed_rows = torch.arange(random.n_seeds, device=pick.device).unsqueeze(1)
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


def build_training(cfg: TrainConfig, seed_ids: list[int], device: torch.device):
    """The run's model for the seeds `seed_ids`, initialised from each seed's own stream, and
    its optimizer (elementwise, so each seed's Adam state is its own)."""
    model = build_model(
        cfg.model,
        cfg.params,
        cfg.input_dropout,
        cfg.classifier_weight,
        cfg.z_noise_std,
        seed_ids,
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
                cfg: TrainConfig, progress: EpochProgress, stop=lambda: False,
                until: int | None = None) -> bool:  # fmt: skip
    """Run the epoch's steps for every seed of the group up to step `until` of the epoch (the
    end of the epoch by default), or until `stop()` says to halt at a step boundary; True when
    the epoch is complete. No host sync per step: `stop` reads a Python flag."""
    until = cfg.steps_per_epoch if until is None else until
    model.train()
    params = list(model.parameters())
    # The original's threshold, from one seed's parameter count.
    max_grad_norm = cfg.grad_norm_per_1000 * sum(p[0].numel() for p in params) / 1000
    batch = cfg.batch_size
    device = images.train_x.device
    coefficients = annealing_coefficients(progress.epoch, cfg, device)
    started = time.perf_counter()
    while progress.steps_done < until and not stop():
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


@dataclass
class Training:
    """Seeds of a run training together on their images, step after step, without the run's
    epochs around them: for measuring a step (ssvae.bench, ssvae.check_gpu). The steps are
    those of a run; the learning rate stays at its first epoch's."""

    cfg: TrainConfig
    images: Images
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: compute.TrainingStep
    progress: EpochProgress | None = None

    @classmethod
    def start(cls, cfg: TrainConfig, images: Images, seed_ids: list[int], device: torch.device,
              compiled: bool = False, log=print) -> "Training":  # fmt: skip
        model, optimizer = build_training(cfg, seed_ids, device)
        return cls(cfg, images, model, optimizer, training_step(model, images, compiled, log))

    def run(self, n_steps: int) -> None:
        """n_steps more steps, into the next epochs as training goes into them."""
        done = 0
        while done < n_steps:
            if self.progress is None or self.progress.steps_done == self.cfg.steps_per_epoch:
                epoch = 0 if self.progress is None else self.progress.epoch + 1
                self.progress = EpochProgress.start(epoch, self.images, self.model.random)
            before = self.progress.steps_done
            until = min(self.cfg.steps_per_epoch, before + n_steps - done)
            train_steps(self.model, self.optimizer, self.step_fn, self.images, self.cfg,
                        self.progress, until=until)  # fmt: skip
            done += self.progress.steps_done - before
