"""M2 with one sampled y per unlabeled example; subclasses say how y is drawn (docs/original.md
3.3-3.5)."""

import torch

from ssvae.models.base import PathTerms, SemiSupervisedVAE
from ssvae.nn import Subgraph, categorical_kl_uniform
from ssvae.schedules import Annealing


class SampledM2(SemiSupervisedVAE):
    def sample_y(self, logits: torch.Tensor, annealing: Annealing):
        """A class code per example, and log q(y|x) of it when y is not reparameterised (its
        gradient then comes from a score-function term), else None."""
        raise NotImplementedError

    def unlabeled(self, x: torch.Tensor, annealing: Annealing) -> PathTerms:
        """U(x) = KL_Y(pi) + KL_Z(x, y) + nllX(x | y, z) for one y from `sample_y` and z ~
        q(z|x,y); a y drawn without gradient adds stopgrad(a_KLZ * KL_Z + nllX) * log pi_y to
        the surrogate (docs/original.md 3.3-3.5)."""
        hx = self.classifier.hidden(x, Subgraph.UNLABELED)
        logits = self.classifier.heads(hx, Subgraph.UNLABELED)[0]
        y, log_q_y = self.sample_y(logits, annealing)
        mu, logcov2, kl_z_per_dim, nll_x = self.z_and_reconstruction(y, hx, x, Subgraph.UNLABELED)
        kl_z = kl_z_per_dim.sum(-1)
        # The categorical KL even for relaxed y: not a bound of the relaxed model (docs/original.md
        # 7.14).
        kl_y = categorical_kl_uniform(logits)
        surrogate = annealing.kl_alpha * kl_y + annealing.kl_z * kl_z + nll_x
        if log_q_y is not None:  # score function without baseline (docs/original.md 7.15)
            surrogate = surrogate + (annealing.kl_z * kl_z + nll_x).detach() * log_q_y
        return PathTerms(
            bound=kl_y + kl_z + nll_x,
            surrogate=surrogate,
            terms={"KL_Y": kl_y, "KL_Z": kl_z, "nllX": nll_x},
            mu=mu,
            logcov2=logcov2,
            kl_z_per_dim=kl_z_per_dim,
        )
