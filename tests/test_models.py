"""ssvae.models and ssvae.config: the objectives of ExactM2 and the MLP (docs/original.md 3.1, 3.2,
3.9)."""

import math

import pytest
import torch
import torch.nn.functional as F
from model_inputs import binary_images, labels, onehot

from ssvae.config import ConfigError, TrainConfig, resolve_params
from ssvae.models.base import Model, build_model
from ssvae.nn import SeedRandom, Subgraph, SubgraphBatchNorm
from ssvae.schedules import Annealing

LOG_10 = math.log(10)
CLASSIFIER_WEIGHT = 128.0
# Coefficients that differ from each other and from 1, so a misplaced one shows.
ANNEALED = Annealing(kl_z=0.3, kl_alpha=0.6, bound=0.7, classifier=0.2)


def make_model(name: str = "ExactM2", params: dict | None = None) -> Model:
    return build_model(name, params or {}, 0.25, CLASSIFIER_WEIGHT, 0.05, [0]).double()


def populated(model: Model) -> Model:
    """The model in eval mode, after two training steps have given every sub-graph its own
    BatchNorm statistics (so a path that used another sub-graph's statistics would show)."""
    model.train()
    with torch.no_grad():
        for seed in (1, 2):
            model(binary_images(6, seed), binary_images(5, seed + 10), labels(5, seed), Annealing())
    return model.eval()


@pytest.fixture
def unit_normal_draws(monkeypatch):
    """Every N(0, 1) draw of the models is 1, so z = mu + sigma exactly and reproducibly."""
    monkeypatch.setattr(SeedRandom, "randn_like", lambda self, x: torch.ones_like(x))


def owner(module_name: str) -> str:
    """The stack a BatchNorm layer belongs to: 'classifier.trunk.norms.0' -> 'classifier.trunk'."""
    return module_name.split(".norms")[0]


def reference_vae_terms(model, a: torch.Tensor, hx: torch.Tensor, x: torch.Tensor, subgraph):
    """KL_Z and -log p(x | a, z) for z = mu + sigma, from the model's networks and float64
    formulas of our own."""
    mu, logcov2 = model.z_encoder(a, hx, subgraph)
    kl_z = 0.5 * (logcov2.exp() + mu**2 - 1 - logcov2).sum(-1)
    decoder_logits = model.decoder(a, mu + torch.exp(0.5 * logcov2))
    log_p = F.logsigmoid(decoder_logits)
    log_not_p = F.logsigmoid(-decoder_logits)
    nll_x = -(x * log_p + (1 - x) * log_not_p).sum(-1)
    return kl_z, nll_x


def reference_unlabeled_bound(model, x: torch.Tensor, kl_factor: float) -> torch.Tensor:
    """U(x) = KL_Y(pi) + sum_c pi_c (kl_factor KL_Z(x, c) + nllX(x | c)), one class at a time."""
    hx = model.classifier.hidden(x, Subgraph.UNLABELED)
    logits = model.classifier.heads(hx, Subgraph.UNLABELED)[0]
    log_pi = logits - logits.logsumexp(-1, keepdim=True)
    pi = log_pi.exp()
    bound = (pi * log_pi).sum(-1) + LOG_10
    for c in range(10):
        y = torch.full(x.shape[:2], c)
        kl_z, nll_x = reference_vae_terms(model, onehot(y), hx, x, Subgraph.UNLABELED)
        bound = bound + pi[..., c] * (kl_factor * kl_z + nll_x)
    return bound


def reference_labeled_bound(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    hx = model.classifier.hidden(x, Subgraph.LABELED)
    kl_z, nll_x = reference_vae_terms(model, onehot(y), hx, x, Subgraph.LABELED)
    return kl_z + nll_x + LOG_10


def summed_cross_entropy(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per seed."""
    hx = model.classifier.hidden(x, Subgraph.CLASSIFIER)
    logits = model.classifier.heads(hx, Subgraph.CLASSIFIER)[0]
    return (logits.logsumexp(-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)).sum(-1)


@pytest.mark.parametrize(("name", "expected"), [("ExactM2", 4_574_794), ("MLP", 2_765_410)])
def test_parameter_count(name: str, expected: int) -> None:
    model = build_model(name, {}, 0.25, CLASSIFIER_WEIGHT, 0.05, [0, 1])
    assert sum(p[0].numel() for p in model.parameters()) == expected  # per seed


class TestExactM2Bounds:
    @pytest.mark.usefixtures("unit_normal_draws")
    @pytest.mark.parametrize("kl_factor", [2.0, 1.0])
    @torch.no_grad()
    def test_unlabeled_bound_sums_over_the_ten_classes(self, kl_factor: float) -> None:
        params = {} if kl_factor == 2.0 else {"kl_factor": kl_factor}
        model = populated(make_model(params=params))
        x = binary_images(4, seed=3)
        got = model.unlabeled(x, Annealing()).bound
        torch.testing.assert_close(got, reference_unlabeled_bound(model, x, kl_factor))

    @pytest.mark.usefixtures("unit_normal_draws")
    @torch.no_grad()
    def test_labeled_bound_matches_the_formula_by_hand(self) -> None:
        model = populated(make_model())
        x, y = binary_images(4, seed=3), labels(4, seed=3)
        got = model.labeled(x, y, Annealing()).bound
        torch.testing.assert_close(got, reference_labeled_bound(model, x, y))

    @torch.no_grad()
    def test_labeled_surrogate_without_kl_z_in_training(self) -> None:
        model = make_model().train()
        x, y = binary_images(4, seed=3), labels(4, seed=3)
        path = model.labeled(x, y, Annealing(kl_z=0.0))
        torch.testing.assert_close(path.bound, path.terms["KL_Z"] + path.terms["nllX"] + LOG_10)
        torch.testing.assert_close(path.surrogate, path.terms["nllX"] + LOG_10)
        # -log p(y) under the uniform prior, logged as p(x,y)/nllY as the original does.
        torch.testing.assert_close(path.terms["nllY"], torch.full((1, 4), LOG_10, dtype=x.dtype))

    @torch.no_grad()
    def test_unlabeled_surrogate_anneals_the_kl_terms(self) -> None:
        model = make_model().train()
        path = model.unlabeled(binary_images(4, seed=3), Annealing(kl_z=0.0, kl_alpha=0.5))
        kl_y, kl_z, nll_x = (path.terms[key] for key in ("KL_Y", "KL_Z", "nllX"))
        # The logged KL_Z is the term as it enters the bound, the factor 2 included.
        torch.testing.assert_close(path.bound, kl_y + kl_z + nll_x)
        torch.testing.assert_close(path.surrogate, 0.5 * kl_y + nll_x)

    @pytest.mark.usefixtures("unit_normal_draws")
    @torch.no_grad()
    def test_logged_kl_z_is_the_original_doubled_term(self) -> None:
        """The original logs 2 sum_c pi_c KL_Z,c: with kl_factor 2 the logged KL_Z is twice
        what the same weights log with kl_factor 1."""
        model = populated(make_model())
        x = binary_images(4, seed=3)
        doubled = model.unlabeled(x, Annealing()).terms["KL_Z"]
        model.kl_factor = 1.0
        single = model.unlabeled(x, Annealing()).terms["KL_Z"]
        torch.testing.assert_close(doubled, 2 * single)


class TestSemiSupervisedObjective:
    @pytest.mark.usefixtures("unit_normal_draws")
    @torch.no_grad()
    def test_objective_and_metrics_from_the_three_subgraphs(self) -> None:
        model = populated(make_model())
        # Unequal batch sizes, so a normalisation by the wrong one shows.
        x_unlabeled, x_labeled, y_labeled = (
            binary_images(4, seed=3),
            binary_images(3, seed=4),
            labels(3, seed=4),
        )
        result = model(x_unlabeled, x_labeled, y_labeled, ANNEALED)

        unlabeled = model.unlabeled(x_unlabeled, ANNEALED)
        labeled = model.labeled(x_labeled, y_labeled, ANNEALED)
        ce = summed_cross_entropy(model, x_labeled, y_labeled)
        expected_objective = (
            ANNEALED.bound * (unlabeled.surrogate.sum(-1) + labeled.surrogate.sum(-1))
            + ANNEALED.classifier * CLASSIFIER_WEIGHT * ce
        )
        torch.testing.assert_close(result.objective, expected_objective)

        metrics = result.metrics
        bound_u, bound_l = unlabeled.bound.sum(-1) / 4, labeled.bound.sum(-1) / 4
        torch.testing.assert_close(metrics["boundU"], bound_u)
        torch.testing.assert_close(metrics["boundL"], bound_l)
        torch.testing.assert_close(metrics["bound"], bound_u + bound_l)
        torch.testing.assert_close(metrics["loss"], bound_u + bound_l + CLASSIFIER_WEIGHT * ce / 4)
        torch.testing.assert_close(metrics["classifier"], CLASSIFIER_WEIGHT * ce / 3)

    def test_each_subgraph_updates_only_its_own_batchnorm_statistics(self) -> None:
        model = make_model().train()
        with torch.no_grad():
            model(
                binary_images(4, seed=3), binary_images(3, seed=4), labels(3, seed=4), Annealing()
            )
        all_three = {Subgraph.UNLABELED, Subgraph.LABELED, Subgraph.CLASSIFIER}
        expected = {
            "classifier.trunk": all_three,
            "classifier.head": {Subgraph.UNLABELED, Subgraph.CLASSIFIER},
            "z_encoder.stack": {Subgraph.UNLABELED, Subgraph.LABELED},
        }
        norms = {n: m for n, m in model.named_modules() if isinstance(m, SubgraphBatchNorm)}
        assert {owner(name) for name in norms} == set(expected)
        for name, norm in norms.items():
            updated = {s for s in Subgraph if norm.updated[0, s].item()}
            moved = {s for s in Subgraph if not torch.all(norm.running_mean[0, s] == 0)}
            assert updated == moved == expected[owner(name)], name

    def test_enumerated_pass_normalises_over_all_ten_class_blocks(self) -> None:
        model = make_model().train()
        rows_seen = []
        model.z_encoder.stack.norms[0].register_forward_hook(
            lambda module, args, output: rows_seen.append((args[1], args[0].shape[1]))
        )
        with torch.no_grad():
            model(
                binary_images(3, seed=3), binary_images(2, seed=4), labels(2, seed=4), Annealing()
            )
        assert sorted(rows_seen) == [(Subgraph.UNLABELED, 30), (Subgraph.LABELED, 2)]

    def test_one_backward_pass_gives_finite_nonzero_gradients(self) -> None:
        model = make_model().train()
        result = model(
            binary_images(8, seed=3), binary_images(8, seed=4), labels(8, seed=4), Annealing()
        )
        result.objective.sum().backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
            assert param.grad.abs().max() > 0, name


class TestMLP:
    @torch.no_grad()
    def test_objective_is_the_weighted_cross_entropy_without_annealing(self) -> None:
        model = populated(make_model("MLP"))
        x, y = binary_images(5, seed=3), labels(5, seed=3)
        result = model(binary_images(4, seed=4), x, y, Annealing(classifier=0.0, bound=0.0))
        ce = summed_cross_entropy(model, x, y)
        torch.testing.assert_close(result.objective, CLASSIFIER_WEIGHT * ce)
        torch.testing.assert_close(result.metrics["classifier"], CLASSIFIER_WEIGHT * ce / 5)
        assert result.metrics["loss"] == result.metrics["classifier"]


class TestSettings:
    @pytest.mark.parametrize("params", [{"kl_factor": 0}, {"kl_factor": -1.0}, {"foo": 1}])
    def test_exact_m2_rejects_bad_params(self, params: dict) -> None:
        with pytest.raises(ValueError, match=next(iter(params))):
            resolve_params("ExactM2", params)

    def test_exact_m2_fills_in_the_default_kl_factor(self) -> None:
        assert resolve_params("ExactM2", {}) == {"kl_factor": 2.0}
        assert resolve_params("ExactM2", {"kl_factor": 1}) == {"kl_factor": 1.0}

    def test_mlp_rejects_any_param(self) -> None:
        with pytest.raises(ValueError, match="kl_factor"):
            resolve_params("MLP", {"kl_factor": 2.0})

    def test_an_unknown_model_name_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ConfigError) as raised:
            TrainConfig(run="r", model="M3", seed=1)
        message = str(raised.value)
        assert "M3" in message
        assert "ExactM2" in message
        assert "MLP" in message

    @pytest.mark.parametrize(
        ("key", "value"), [("epochs", -1), ("input_dropout", 1.0), ("lr", 0.0)]
    )
    def test_out_of_range_value_names_the_key(self, key: str, value) -> None:
        with pytest.raises(ConfigError, match=f"^{key} = {value!r}: "):
            TrainConfig.from_dict({"run": "r", "model": "ExactM2", "seed": 1, key: value})
