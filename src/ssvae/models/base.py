"""What every model shares: the classifier terms, and the semi-supervised objective
(docs/original.md 3.1).

Tensors are (seeds, batch, ...) and every term is per seed (ssvae.nn): the objective a step
differentiates is one value per seed, as is every logged metric.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssvae.config import resolve_params
from ssvae.models import MODELS, model_class
from ssvae.nn import (
    N_CLASSES,
    ClassifierNet,
    Decoder,
    SeedRandom,
    Subgraph,
    ZEncoder,
    bernoulli_nll,
    gaussian_kl,
    init_uniform_,
)
from ssvae.schedules import Annealing

LOG_N_CLASSES = math.log(N_CLASSES)  # -log p(y) under the uniform prior


@dataclass
class PathTerms:
    """One VAE path (unlabeled or labeled) on a batch, every tensor per seed and example."""

    bound: torch.Tensor  # the reported negative ELBO
    surrogate: torch.Tensor  # what training differentiates: annealed, with any score-function term
    terms: dict[str, torch.Tensor]  # logged components (KL_Z, nllX, KL_Y, ...)
    mu: torch.Tensor  # q(z|.) rows as the model arranges them (ExactM2: 10 class blocks)
    logcov2: torch.Tensor
    kl_z_per_dim: torch.Tensor  # (seeds, batch, 50); ExactM2: weighted by q(y|x) over classes


@dataclass
class StepResult:
    objective: torch.Tensor  # (seeds,): the summed training objective without the L2 term
    metrics: dict[str, torch.Tensor]  # (seeds,) per batch, named as in the original's output.h5
    unlabeled: PathTerms | None = None


class Model(nn.Module):
    """A model of the comparison: the q(y|x) classifier, plus whatever it adds around it. A
    model's own settings (a run's params: sharpening, kl_factor, ...) arrive as keyword
    arguments of its constructor; their defaults, bounds and reasons are in the config schema
    ($defs/params)."""

    # q(y|x) ends in one clipped logit head; LogisticNormal asks for two unclipped ones.
    classifier_outputs = 1
    clip_logits = True

    def __init__(self, random: SeedRandom, input_dropout: float, classifier_weight: float):
        super().__init__()
        self.random = random  # the seeds' own random streams (not module state)
        self.classifier_weight = classifier_weight
        self.classifier = ClassifierNet(
            random, input_dropout, self.classifier_outputs, self.clip_logits
        )

    @property
    def has_decoder(self) -> bool:
        return MODELS[type(self).__name__].has_decoder

    def reset_parameters(self) -> None:
        init_uniform_(self, self.random)

    def logged_hyperparameters(self, annealing: Annealing) -> dict[str, float]:
        """What the original logs each epoch under hyperparameters/ beside the annealing
        coefficients: the annealed sharpening, the run's sharpening times its multiplier."""
        if not hasattr(self, "sharpening"):
            return {}
        return {"sharpening": self.sharpening * annealing.sharpening}

    def classifier_log_probs(self, x: torch.Tensor, annealing: Annealing) -> torch.Tensor:
        """log q(y|x) on the classifier sub-graph (BatchNorm statistics of labeled batches only)."""
        hx = self.classifier.hidden(x, Subgraph.CLASSIFIER)
        return F.log_softmax(self.classifier.heads(hx, Subgraph.CLASSIFIER)[0], dim=-1)

    def classifier_terms(self, x: torch.Tensor, y: torch.Tensor, annealing: Annealing):
        """Summed cross-entropy and the per-batch classifier metrics (accuracy, weighted CE)."""
        log_probs = self.classifier_log_probs(x, annealing)
        ce = -log_probs.gather(-1, y.unsqueeze(-1)).sum((-2, -1))
        metrics = {
            "classifier": self.classifier_weight * ce / y.shape[-1],
            "accuracy": (log_probs.argmax(-1) == y).to(log_probs.dtype).mean(-1),
        }
        return ce, metrics


class SemiSupervisedVAE(Model):
    """The M2-style VAE with three sub-graphs on shared weights.

    Subclasses say how the unlabeled path treats y (`unlabeled`); the labeled path below is the
    M2 family's (one-hot y), which LogisticNormal and LogGamma replace with their own.
    """

    def __init__(self, random: SeedRandom, input_dropout: float, classifier_weight: float,
                 z_noise_std: float):  # fmt: skip
        super().__init__(random, input_dropout, classifier_weight)
        self.z_noise_std = z_noise_std
        self.z_encoder = ZEncoder(random.n_seeds)
        self.decoder = Decoder(random.n_seeds)

    def unlabeled(self, x: torch.Tensor, annealing: Annealing) -> PathTerms:
        raise NotImplementedError

    def sample_z(self, a: torch.Tensor, hx: torch.Tensor, subgraph: Subgraph):
        mu, logcov2 = self.z_encoder(a, hx, subgraph)
        z = mu + torch.exp(0.5 * logcov2) * self.random.randn_like(mu)
        return z, mu, logcov2

    def reconstruction_nll(self, a: torch.Tensor, z: torch.Tensor, x: torch.Tensor):
        """-log p(x | a, z); training adds N(0, 0.05^2) noise to z, after the KL (docs/original.md
        2.4)."""
        if self.training and self.z_noise_std > 0:
            z = z + self.z_noise_std * self.random.randn_like(z)
        return bernoulli_nll(self.decoder(a, z), x)

    def z_and_reconstruction(self, a, hx, x, subgraph: Subgraph):
        """z ~ q(z | a, x) decoded with class code a: mu, logcov2, the KL of each z dimension,
        and -log p(x | a, z)."""
        z, mu, logcov2 = self.sample_z(a, hx, subgraph)
        return mu, logcov2, gaussian_kl(mu, logcov2), self.reconstruction_nll(a, z, x)

    def labeled(self, x: torch.Tensor, y: torch.Tensor, annealing: Annealing) -> PathTerms:
        """L(x,y) = KL_Z(x,y) + nllX(x | y, z) + log 10 with z ~ q(z|x,y): the M2 family's
        labeled bound, log 10 being -log p(y) under the uniform prior (docs/original.md 3.2)."""
        hx = self.classifier.hidden(x, Subgraph.LABELED)
        onehot = F.one_hot(y, N_CLASSES).to(x.dtype)
        mu, logcov2, kl_z_per_dim, nll_x = self.z_and_reconstruction(
            onehot, hx, x, Subgraph.LABELED
        )
        kl_z = kl_z_per_dim.sum(-1)
        nll_y = torch.full_like(kl_z, LOG_N_CLASSES)  # -log p(y), the uniform prior over classes
        return PathTerms(
            bound=kl_z + nll_x + nll_y,
            surrogate=annealing.kl_z * kl_z + nll_x + nll_y,
            terms={"KL_Z": kl_z, "nllX": nll_x, "nllY": nll_y},
            mu=mu,
            logcov2=logcov2,
            kl_z_per_dim=kl_z_per_dim,
        )

    def forward(self, x_unlabeled, x_labeled, y_labeled, annealing: Annealing) -> StepResult:
        unl = self.unlabeled(x_unlabeled, annealing)
        lab = self.labeled(x_labeled, y_labeled, annealing)
        ce, metrics = self.classifier_terms(x_labeled, y_labeled, annealing)
        n_unlabeled = x_unlabeled.shape[-2]
        objective = (
            annealing.bound * (unl.surrogate.sum(-1) + lab.surrogate.sum(-1))
            + annealing.classifier * self.classifier_weight * ce
        )
        # Both bounds are normalised by the unlabeled batch size, as in the original
        # (docs/original.md 7.20).
        bound_u = unl.bound.sum(-1) / n_unlabeled
        bound_l = lab.bound.sum(-1) / n_unlabeled
        metrics |= {
            "boundU": bound_u,
            "boundL": bound_l,
            "bound": bound_u + bound_l,
            "loss": bound_u + bound_l + self.classifier_weight * ce / n_unlabeled,
        }
        metrics |= {f"p(x)/{k}": v.mean(-1) for k, v in unl.terms.items()}
        metrics |= {f"p(x,y)/{k}": v.mean(-1) for k, v in lab.terms.items()}
        return StepResult(objective, metrics, unl)

    @torch.no_grad()
    def decode_means(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli means of p(x | a, z): the images the sample grids show."""
        return torch.sigmoid(self.decoder(a, z))


class LatentClassVAE(SemiSupervisedVAE):
    """A VAE with a continuous class latent, whose labeled path is its unlabeled path told the
    label (LogisticNormal, LogGamma)."""

    def vae_path(self, x, subgraph: Subgraph, annealing: Annealing, y=None) -> PathTerms:
        raise NotImplementedError

    def unlabeled(self, x, annealing):
        return self.vae_path(x, Subgraph.UNLABELED, annealing)

    def labeled(self, x, y, annealing):
        return self.vae_path(x, Subgraph.LABELED, annealing, y)


def build_model(name: str, params: dict, input_dropout: float, classifier_weight: float,
                z_noise_std: float, seed_ids: list[int],
                device: torch.device | str = "cpu") -> Model:  # fmt: skip
    """The model for the seeds `seed_ids` (one set of weights each), on `device`, initialised
    from each seed's own random stream, which its training draws then continue. The model
    takes its params (defaults filled in) as keywords."""
    random = SeedRandom(seed_ids, device)
    settings = resolve_params(name, params)
    cls = model_class(name)
    if MODELS[name].has_decoder:
        model = cls(random, input_dropout, classifier_weight, z_noise_std, **settings)
    else:
        model = cls(random, input_dropout, classifier_weight)
    model.to(random.device).reset_parameters()
    return model
