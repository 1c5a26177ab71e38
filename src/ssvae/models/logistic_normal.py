"""LogisticNormal: a continuous class latent alpha = softmax(s * v), v ~ N(mu_alpha, sigma_alpha^2),
which both the decoder and p(y|alpha) = Cat(alpha) read (docs/original.md 3.6)."""

import math

import torch
import torch.nn.functional as F

from ssvae.models.base import LatentClassVAE, PathTerms
from ssvae.nn import N_CLASSES, Subgraph, gaussian_kl
from ssvae.schedules import Annealing


class LogisticNormal(LatentClassVAE):
    classifier_outputs = 2  # mu_alpha and logcov2_alpha
    clip_logits = False

    def __init__(self, random, input_dropout, classifier_weight, z_noise_std, sharpening,
                 eps_mean, posterior_val):  # fmt: skip
        super().__init__(random, input_dropout, classifier_weight, z_noise_std)
        self.sharpening = sharpening
        self.eps_mean = eps_mean
        self.label_shift = math.log1p(math.exp(posterior_val))  # softplus

    def sample_log_alpha(self, mu, logcov2, annealing: Annealing) -> torch.Tensor:
        eps = self.random.randn_like(mu) + self.eps_mean
        v = mu + torch.exp(0.5 * logcov2) * eps
        return F.log_softmax(self.sharpening * annealing.sharpening * v, dim=-1)

    def vae_path(self, x, subgraph: Subgraph, annealing: Annealing, y=None) -> PathTerms:
        """U(x) = KL_alpha + KL_Z + nllX(x | alpha, z) with alpha = softmax(s * v), v ~
        N(mu_alpha, sigma_alpha^2); L(x,y) adds -log alpha_y, its mu_alpha[y] shifted by
        softplus(posterior_val) (docs/original.md 3.6)."""
        hx = self.classifier.hidden(x, subgraph)
        mu_alpha, logcov2_alpha = self.classifier.heads(hx, subgraph)
        if y is not None:
            mu_alpha = mu_alpha + self.label_shift * F.one_hot(y, N_CLASSES).to(x.dtype)
        log_alpha = self.sample_log_alpha(mu_alpha, logcov2_alpha, annealing)
        kl_alpha = gaussian_kl(mu_alpha, logcov2_alpha).sum(-1)  # ignores eps_mean, as the original
        alpha = log_alpha.exp()
        mu, logcov2, kl_z_per_dim, nll_x = self.z_and_reconstruction(alpha, hx, x, subgraph)
        kl_z = kl_z_per_dim.sum(-1)
        terms = {"KL_alpha": kl_alpha, "KL_Z": kl_z, "nllX": nll_x}
        nll = nll_x
        if y is not None:
            terms["nllY"] = -log_alpha.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            nll = nll_x + terms["nllY"]
        return PathTerms(
            bound=kl_alpha + kl_z + nll,
            surrogate=annealing.kl_alpha * kl_alpha + annealing.kl_z * kl_z + nll,
            terms=terms,
            mu=mu,
            logcov2=logcov2,
            kl_z_per_dim=kl_z_per_dim,
        )

    def classifier_log_probs(self, x, annealing):
        """Training: a sampled, sharpened alpha; evaluation: softmax(mu_alpha) (docs/original.md
        7.18)."""
        hx = self.classifier.hidden(x, Subgraph.CLASSIFIER)
        mu_alpha, logcov2_alpha = self.classifier.heads(hx, Subgraph.CLASSIFIER)
        if self.training:
            return self.sample_log_alpha(mu_alpha, logcov2_alpha, annealing)
        return F.log_softmax(mu_alpha, dim=-1)
