"""ApproxM2: one y ~ q(y|x) per unlabeled example, trained by REINFORCE (docs/original.md 3.3)."""

import torch.nn.functional as F

from ssvae.models.sampled_m2 import SampledM2
from ssvae.nn import N_CLASSES, categorical_draw


class ApproxM2(SampledM2):
    def sample_y(self, logits, annealing):
        log_pi = F.log_softmax(logits, dim=-1)
        drawn = categorical_draw(log_pi.detach().exp(), self.random)
        y = F.one_hot(drawn, N_CLASSES).to(logits.dtype)
        return y, log_pi.gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
