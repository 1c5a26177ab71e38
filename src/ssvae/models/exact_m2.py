"""ExactM2: Kingma et al.'s M2 with y summed out exactly over the 10 classes (docs/original.md
3.2)."""

import torch
import torch.nn.functional as F

from ssvae.models.base import PathTerms, SemiSupervisedVAE
from ssvae.nn import N_CLASSES, Subgraph, categorical_kl_uniform, gaussian_kl
from ssvae.schedules import Annealing


class ExactM2(SemiSupervisedVAE):
    def __init__(self, random, input_dropout, classifier_weight, z_noise_std, kl_factor: float):
        super().__init__(random, input_dropout, classifier_weight, z_noise_std)
        self.kl_factor = kl_factor

    def unlabeled(self, x: torch.Tensor, annealing: Annealing) -> PathTerms:
        """U(x) = KL_Y(pi) + sum_c pi_c * (kl_factor * KL_Z(x,c)) + sum_c pi_c * nllX(x | c, z_c),
        y summed out over the 10 classes; pi = q(y|x), z_c ~ q(z|x,c), and KL_Y the KL to the
        uniform p(y). kl_factor is 2 in the original (docs/original.md 3.2, 7.2)."""
        n_seeds, batch = x.shape[:2]
        hx = self.classifier.hidden(x, Subgraph.UNLABELED)
        logits = self.classifier.heads(hx, Subgraph.UNLABELED)[0]
        pi = F.softmax(logits, dim=-1)
        # One batched pass over all classes: block c holds every example paired with y = c.
        classes = torch.eye(N_CLASSES, dtype=x.dtype, device=x.device)
        y_blocks = classes.repeat_interleave(batch, dim=0).expand(n_seeds, -1, -1)
        z, mu, logcov2 = self.sample_z(y_blocks, hx.repeat(1, N_CLASSES, 1), Subgraph.UNLABELED)
        kl_z_dims = gaussian_kl(mu, logcov2).view(n_seeds, N_CLASSES, batch, -1)
        kl_z = kl_z_dims.sum(-1).transpose(1, 2)  # (seeds, batch, class)
        nll_x = self.reconstruction_nll(y_blocks, z, x.repeat(1, N_CLASSES, 1))
        nll_x = nll_x.view(n_seeds, N_CLASSES, batch).transpose(1, 2)
        kl_y = categorical_kl_uniform(logits)
        # The KL_Z term as it enters the bound, factor included: the original logs it so.
        kl_z_term = self.kl_factor * (pi * kl_z).sum(-1)
        expected_nll_x = (pi * nll_x).sum(-1)
        return PathTerms(
            bound=kl_y + kl_z_term + expected_nll_x,
            surrogate=annealing.kl_alpha * kl_y + annealing.kl_z * kl_z_term + expected_nll_x,
            terms={"KL_Y": kl_y, "KL_Z": kl_z_term, "nllX": expected_nll_x},
            mu=mu,
            logcov2=logcov2,
            kl_z_per_dim=torch.einsum("sbc,scbd->sbd", pi, kl_z_dims),
        )
