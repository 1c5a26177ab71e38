"""LogisticNormalM2: as GumbelSoftmaxM2, with Gaussian instead of Gumbel noise (docs/original.md
3.5)."""

from ssvae.models.gumbel_softmax_m2 import GumbelSoftmaxM2
from ssvae.nn import relaxed_one_hot


class LogisticNormalM2(GumbelSoftmaxM2):
    def sample_y(self, logits, annealing):
        s = self.sharpening * annealing.sharpening
        noise = self.random.randn_like(logits)
        return relaxed_one_hot(logits, noise, s, self.straight_through), None


class STLogisticNormalM2(LogisticNormalM2):
    """Not in the original's comparison; ported for completeness (docs/original.md 3.5)."""

    straight_through = True
