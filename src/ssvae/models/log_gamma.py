"""LogGamma: a Dirichlet class latent through independent log-Gamma variates u_k ~ LogGamma(beta_k),
alpha = softmax(s * u), trained with a score-function term on both paths (docs/original.md 3.7)."""

import torch
import torch.nn.functional as F

from ssvae.models.base import LatentClassVAE, PathTerms
from ssvae.nn import N_CLASSES, Subgraph, sample_log_gamma
from ssvae.schedules import Annealing


class LogGamma(LatentClassVAE):
    def __init__(self, random, input_dropout, classifier_weight, z_noise_std, sharpening,
                 betaprior):  # fmt: skip
        super().__init__(random, input_dropout, classifier_weight, z_noise_std)
        self.sharpening = sharpening
        self.betaprior = betaprior

    def logged_hyperparameters(self, annealing: Annealing) -> dict[str, float]:
        # The prior's beta0; the original's annealBP moves it from betaprior to finalbeta, both
        # 0.2 in the experiment, so it is constant (docs/original.md 3.7, 4.5).
        return super().logged_hyperparameters(annealing) | {"betaprior": self.betaprior}

    def vae_path(self, x, subgraph: Subgraph, annealing: Annealing, y=None) -> PathTerms:
        """U(x) = KL_lg + KL_Z + nllX(x | alpha, z), alpha = softmax(s * u), u ~ LogGamma(beta);
        L(x,y) adds nllY = psi(sum beta) - psi(beta_y), beta shifted by onehot(y); both add
        stopgrad(a_KLZ * KL_Z + nllX) * log q(u|beta) to the surrogate (docs/original.md 3.7)."""
        hx = self.classifier.hidden(x, subgraph)
        beta = self.classifier.heads(hx, subgraph)[0].exp()  # clipped logits: beta in [e^-5, e^5]
        if y is not None:
            beta = beta + F.one_hot(y, N_CLASSES).to(x.dtype)
        u = sample_log_gamma(beta.detach(), self.random)
        alpha = F.softmax(self.sharpening * annealing.sharpening * u, dim=-1)
        b0 = torch.as_tensor(self.betaprior, dtype=x.dtype, device=x.device)
        kl_lg = (torch.lgamma(b0) - torch.lgamma(beta) - (b0 - beta) * torch.digamma(beta)).sum(-1)
        log_q_u = (beta * u - u.exp() - torch.lgamma(beta)).sum(-1)
        mu, logcov2, kl_z_per_dim, nll_x = self.z_and_reconstruction(alpha, hx, x, subgraph)
        kl_z = kl_z_per_dim.sum(-1)
        terms = {"KL_loggamma": kl_lg, "KL_Z": kl_z, "nllX": nll_x}
        nll = nll_x
        if y is not None:  # -E_Dir(beta)[log alpha_y], analytic; it ignores sharpening
            terms["nllY"] = torch.digamma(beta.sum(-1)) - torch.digamma(
                beta.gather(-1, y.unsqueeze(-1))
            ).squeeze(-1)
            nll = nll_x + terms["nllY"]
        # Score function without baseline on both paths; f leaves out KL_loggamma and nllY.
        score = (annealing.kl_z * kl_z + nll_x).detach() * log_q_u
        return PathTerms(
            bound=kl_lg + kl_z + nll,
            surrogate=annealing.kl_alpha * kl_lg + annealing.kl_z * kl_z + nll + score,
            terms=terms,
            mu=mu,
            logcov2=logcov2,
            kl_z_per_dim=kl_z_per_dim,
        )
