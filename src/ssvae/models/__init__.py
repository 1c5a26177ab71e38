"""The models of the comparison, by the name a run's config gives."""

import torch

from ssvae.models.approx_m2 import ApproxM2
from ssvae.models.base import Model, SemiSupervisedVAE
from ssvae.models.exact_m2 import ExactM2
from ssvae.models.gumbel_softmax_m2 import GumbelSoftmaxM2, STGumbelSoftmaxM2
from ssvae.models.log_gamma import LogGamma
from ssvae.models.logistic_normal import LogisticNormal
from ssvae.models.logistic_normal_m2 import LogisticNormalM2, STLogisticNormalM2
from ssvae.models.mlp import MLP
from ssvae.nn import SeedRandom

__all__ = ["MODELS", "Model", "SemiSupervisedVAE", "build_model"]

MODELS: dict[str, type[Model]] = {
    model.__name__: model
    for model in (
        ExactM2,
        ApproxM2,
        GumbelSoftmaxM2,
        STGumbelSoftmaxM2,
        LogisticNormalM2,
        STLogisticNormalM2,
        LogisticNormal,
        LogGamma,
        MLP,
    )
}


def build_model(name: str, params: dict, input_dropout: float, classifier_weight: float,
                z_noise_std: float, seeds: list[int],
                device: torch.device | str = "cpu") -> Model:  # fmt: skip
    """The model for `seeds` (one set of weights each), on `device`, initialised from each
    seed's own random stream, which its training draws then continue."""
    cls = MODELS[name]
    settings = cls.resolve_params(params)
    random = SeedRandom(seeds, device)
    if cls.has_decoder:
        model = cls(random, input_dropout, classifier_weight, z_noise_std, **settings)
    else:
        model = cls(random, input_dropout, classifier_weight)
    model.to(random.device).reset_parameters()
    return model
