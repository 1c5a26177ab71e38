"""GumbelSoftmaxM2: y relaxed as softmax(s * (logits + Gumbel noise)) (docs/original.md 3.4)."""

from ssvae.models.sampled_m2 import SampledM2
from ssvae.nn import gumbel_noise, relaxed_one_hot


class GumbelSoftmaxM2(SampledM2):
    straight_through = False

    def __init__(self, random, input_dropout, classifier_weight, z_noise_std, sharpening: float):
        super().__init__(random, input_dropout, classifier_weight, z_noise_std)
        self.sharpening = sharpening

    def sample_y(self, logits, annealing):
        noise = gumbel_noise(logits, self.random)
        s = self.sharpening * annealing.sharpening
        return relaxed_one_hot(logits, noise, s, self.straight_through), None


class STGumbelSoftmaxM2(GumbelSoftmaxM2):
    """One-hot y going forward, the relaxed sample's gradient going back."""

    straight_through = True
