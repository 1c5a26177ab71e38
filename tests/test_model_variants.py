"""ssvae.models beyond ExactM2: the sampled and relaxed M2 variants, LogisticNormal, LogGamma and
the log-Gamma sampler (docs/original.md 2.5, 3.3-3.7, 3.10, 7), checked against float64 formulas of
our own."""

import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_inputs import binary_images, labels, onehot

from ssvae import data, runfile
from ssvae.config import MODEL_PARAMS, TrainConfig, resolve_params
from ssvae.job import train
from ssvae.models import MODELS, gumbel_softmax_m2, log_gamma
from ssvae.models.base import SemiSupervisedVAE, build_model
from ssvae.nn import SeedRandom, Subgraph, gumbel_noise, relaxed_one_hot, sample_log_gamma
from ssvae.schedules import Annealing
from ssvae.splits import write_split

LOG_10 = math.log(10)
LOGIT_CLIP = 5.0
SHARPENING = 3.0  # the run setting in the bound tests; ANNEALED halves it
# Coefficients that differ from each other and from 1, so a misplaced one shows.
ANNEALED = Annealing(kl_z=0.3, kl_alpha=0.6, bound=0.7, classifier=0.2, sharpening=0.5)
EPS_MEAN = 1.0  # LogisticNormal's noise is N(1, 1) by default (docs/original.md 7.3)
LABEL_SHIFT = math.log1p(math.exp(-6.0))  # softplus(posterior_val = -6) (docs/original.md 7.17)
BETA_PRIOR = 0.2

SHARPENED_MODELS = [
    "GumbelSoftmaxM2",
    "STGumbelSoftmaxM2",
    "LogisticNormalM2",
    "STLogisticNormalM2",
    "LogisticNormal",
    "LogGamma",
]
VAE_MODELS = ["ExactM2", "ApproxM2", *SHARPENED_MODELS]
SCORE_FUNCTION_MODELS = {"ApproxM2", "LogGamma"}
# (model, noise added to the logits, straight-through)
RELAXED_M2 = [
    ("GumbelSoftmaxM2", "gumbel", False),
    ("STGumbelSoftmaxM2", "gumbel", True),
    ("LogisticNormalM2", "normal", False),
    ("STLogisticNormalM2", "normal", True),
]


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: on a busy machine extra threads only contend (and can slow runs 50x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(name: str, sharpening: float = SHARPENING, **params) -> SemiSupervisedVAE:
    if "sharpening" in MODEL_PARAMS[name].get("properties", {}):
        params["sharpening"] = sharpening
    return build_model(name, params, 0.25, 128.0, 0.05, [0]).double()


def evaluation_model(name: str) -> SemiSupervisedVAE:
    """The model in eval mode, after two training steps have filled every sub-graph's BatchNorm
    statistics, with its first head's weights scaled so that some logits pass the clip."""
    model = make_model(name)
    with torch.no_grad():
        model.classifier.outputs[0].weight *= 30
        model.train()
        for seed in (1, 2):
            model(binary_images(6, seed), binary_images(5, seed + 10), labels(5, seed), Annealing())
    return model.eval()


class FixedNoise:
    """Every draw of one kind and shape gives the same float64 tensor."""

    def __init__(self):
        self._draws = {}
        self.concentrations = []  # what the log-Gamma sampler was asked for

    def normal(self, shape) -> torch.Tensor:
        return self._draw("normal", shape)

    def gumbel(self, shape) -> torch.Tensor:
        return self._draw("gumbel", shape)

    def log_gamma(self, concentration: torch.Tensor) -> torch.Tensor:
        self.concentrations.append(concentration)
        return self._draw("log_gamma", concentration.shape)

    def _draw(self, kind: str, shape) -> torch.Tensor:
        key = (kind, tuple(shape))
        if key not in self._draws:
            generator = torch.Generator().manual_seed(len(self._draws))
            if kind == "gumbel":
                uniform = torch.rand(key[1], generator=generator, dtype=torch.float64)
                self._draws[key] = -torch.log(-torch.log(uniform))
            else:
                self._draws[key] = torch.randn(key[1], generator=generator, dtype=torch.float64)
        return self._draws[key]


@pytest.fixture
def fixed_noise(monkeypatch) -> FixedNoise:
    """The models' N(0, 1), Gumbel and log-Gamma draws, fixed."""
    noise = FixedNoise()
    monkeypatch.setattr(
        SeedRandom, "randn_like", lambda self, like: noise.normal(like.shape).to(like.dtype)
    )
    monkeypatch.setattr(
        gumbel_softmax_m2,
        "gumbel_noise",
        lambda like, random: noise.gumbel(like.shape).to(like.dtype),
    )
    monkeypatch.setattr(
        log_gamma, "sample_log_gamma", lambda concentration, random: noise.log_gamma(concentration)
    )
    return noise


@contextmanager
def class_inputs(model: SemiSupervisedVAE):
    """The class code `a` that q(z|a, x) and p(x|a, z) are called with, per network."""
    seen = {"z_encoder": [], "decoder": []}
    handles = [
        getattr(model, network).register_forward_pre_hook(
            lambda module, args, calls=calls: calls.append(args[0])
        )
        for network, calls in seen.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def assert_one_hot(a: torch.Tensor) -> None:
    # Straight-through: hard - soft + soft is one-hot up to rounding.
    torch.testing.assert_close(a, onehot(a.argmax(-1)), rtol=0, atol=1e-12)


def classifier_outputs(model, x: torch.Tensor, subgraph: Subgraph):
    """h(x) and the raw (unclipped) outputs of the classifier's linear heads."""
    hx = model.classifier.hidden(x, subgraph)
    h = model.classifier.head(hx, subgraph)
    return hx, [output(h) for output in model.classifier.outputs]


def clipped(raw: torch.Tensor) -> torch.Tensor:
    assert (raw.abs() > LOGIT_CLIP).any() and (raw.abs() < LOGIT_CLIP).any()  # clip exercised
    return raw.clamp(-LOGIT_CLIP, LOGIT_CLIP)


def log_softmax(v: torch.Tensor) -> torch.Tensor:
    return v - v.logsumexp(-1, keepdim=True)


def categorical_kl(logits: torch.Tensor) -> torch.Tensor:
    log_pi = log_softmax(logits)
    return (log_pi.exp() * log_pi).sum(-1) + LOG_10


def gaussian_kl(mu: torch.Tensor, logcov2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logcov2.exp() + mu**2 - 1 - logcov2).sum(-1)


def z_terms(model, a, hx, x, subgraph: Subgraph, noise: FixedNoise):
    """KL_Z and -log p(x | a, z) with z = mu + sigma * (the fixed normal draw)."""
    mu, logcov2 = model.z_encoder(a, hx, subgraph)
    z = mu + torch.exp(0.5 * logcov2) * noise.normal(mu.shape)
    decoder_logits = model.decoder(a, z)
    nll_x = -(x * F.logsigmoid(decoder_logits) + (1 - x) * F.logsigmoid(-decoder_logits)).sum(-1)
    return gaussian_kl(mu, logcov2), nll_x


def assert_same_gradients(model, got: torch.Tensor, expected: torch.Tensor) -> None:
    names, params = zip(*model.named_parameters(), strict=True)
    got_grads = torch.autograd.grad(got.sum(), params, retain_graph=True, allow_unused=True)
    expected_grads = torch.autograd.grad(expected.sum(), params, allow_unused=True)
    for name, got_grad, expected_grad in zip(names, got_grads, expected_grads, strict=True):
        assert (got_grad is None) == (expected_grad is None), name
        if got_grad is not None:
            torch.testing.assert_close(got_grad, expected_grad, msg=name)


@pytest.mark.parametrize("name", ["ApproxM2", *SHARPENED_MODELS])
def test_each_vae_has_the_originals_parameter_count(name: str) -> None:
    expected = 4_577_804 if name == "LogisticNormal" else 4_574_794
    params = {"sharpening": 1.0} if name in SHARPENED_MODELS else {}
    model = build_model(name, params, 0.25, 128.0, 0.05, [0])
    assert sum(p[0].numel() for p in model.parameters()) == expected


class TestSettings:
    def test_which_models_have_a_sharpening(self) -> None:
        with_sharpening = {
            name for name, schema in MODEL_PARAMS.items()
            if "sharpening" in schema.get("properties", {})
        }  # fmt: skip
        assert with_sharpening == set(SHARPENED_MODELS)

    @pytest.mark.parametrize("name", SHARPENED_MODELS)
    def test_sharpening_must_be_given(self, name: str) -> None:
        with pytest.raises(ValueError, match="sharpening"):
            resolve_params(name, {})

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("ApproxM2", {}),
            ("LogisticNormal", {"sharpening": 2.0, "eps_mean": 1.0, "posterior_val": -6.0}),
            ("LogGamma", {"sharpening": 2.0, "betaprior": 0.2}),
        ],
    )
    def test_unset_params_take_the_schema_defaults(self, name: str, expected: dict) -> None:
        params = {"sharpening": 2} if name in SHARPENED_MODELS else {}
        assert resolve_params(name, params) == expected


class TestApproxM2:
    def test_unlabeled_bound_and_score_function_surrogate(self, fixed_noise) -> None:
        model = evaluation_model("ApproxM2")
        x = binary_images(4, seed=3)
        with class_inputs(model) as seen:
            path = model.unlabeled(x, ANNEALED)
        y = seen["decoder"][0]
        assert_one_hot(y)
        torch.testing.assert_close(seen["z_encoder"][0], y)

        hx, (raw,) = classifier_outputs(model, x, Subgraph.UNLABELED)
        logits = clipped(raw)
        kl_y = categorical_kl(logits)
        kl_z, nll_x = z_terms(model, y, hx, x, Subgraph.UNLABELED, fixed_noise)
        f = ANNEALED.kl_z * kl_z + nll_x
        log_pi_y = (log_softmax(logits) * y).sum(-1)
        surrogate = ANNEALED.kl_alpha * kl_y + f + f.detach() * log_pi_y
        torch.testing.assert_close(path.bound, kl_y + kl_z + nll_x)
        torch.testing.assert_close(path.surrogate, surrogate)
        assert_same_gradients(model, path.surrogate, surrogate)

    def test_y_is_drawn_from_q_y_given_x_without_gradient(self) -> None:
        n_draws = 20_000
        model = make_model("ApproxM2")
        row = torch.tensor([2.0, 1.0, 0.0, -1.0, -5.0, 0.5, 0.5, 3.0, -2.0, 1.5]).double()
        logits = row.expand(1, n_draws, 10).clone().requires_grad_()
        y, log_q_y = model.sample_y(logits, Annealing())
        assert_one_hot(y)
        assert not y.requires_grad
        torch.testing.assert_close(log_q_y, (log_softmax(logits) * y).sum(-1))
        pi = log_softmax(row).exp()
        standard_error = (pi * (1 - pi) / n_draws).sqrt()
        assert ((y[0].mean(0) - pi).abs() < 5 * standard_error).all()


class TestRelaxedM2:
    @pytest.mark.parametrize(("name", "noise_kind", "straight_through"), RELAXED_M2)
    def test_unlabeled_bound_and_pathwise_surrogate(
        self, name: str, noise_kind: str, straight_through: bool, fixed_noise
    ) -> None:
        model = evaluation_model(name)
        x = binary_images(4, seed=3)
        with class_inputs(model) as seen:
            path = model.unlabeled(x, ANNEALED)

        hx, (raw,) = classifier_outputs(model, x, Subgraph.UNLABELED)
        logits = clipped(raw)
        perturbed = logits + getattr(fixed_noise, noise_kind)(logits.shape)
        y = F.softmax(SHARPENING * ANNEALED.sharpening * perturbed, dim=-1)
        if straight_through:  # the hard sample forward, the soft one's gradient back
            y = onehot(perturbed.argmax(-1)) - y.detach() + y
            assert_one_hot(seen["decoder"][0])
        torch.testing.assert_close(seen["decoder"][0], y)
        torch.testing.assert_close(seen["z_encoder"][0], y)
        # KL_Y is the categorical one of q(y|x), even for a relaxed y (docs/original.md 7.14).
        kl_y = categorical_kl(logits)
        kl_z, nll_x = z_terms(model, y, hx, x, Subgraph.UNLABELED, fixed_noise)
        surrogate = ANNEALED.kl_alpha * kl_y + ANNEALED.kl_z * kl_z + nll_x
        torch.testing.assert_close(path.bound, kl_y + kl_z + nll_x)
        torch.testing.assert_close(path.surrogate, surrogate)
        assert_same_gradients(model, path.surrogate, surrogate)

    @pytest.mark.parametrize("sharpening", [0.5, 3.0])
    def test_straight_through_is_one_hot_with_the_soft_gradient(self, sharpening: float) -> None:
        generator = torch.Generator().manual_seed(0)
        logits, noise, weights = torch.randn(3, 6, 10, generator=generator, dtype=torch.float64)
        logits.requires_grad_()
        soft = F.softmax(sharpening * (logits + noise), dim=-1)
        hard = relaxed_one_hot(logits, noise, sharpening, straight_through=True)
        torch.testing.assert_close(relaxed_one_hot(logits, noise, sharpening, False), soft)
        assert_one_hot(hard)
        assert torch.equal(hard.argmax(-1), (logits + noise).argmax(-1))
        (hard_grad,) = torch.autograd.grad((weights * hard).sum(), logits)
        (soft_grad,) = torch.autograd.grad((weights * soft).sum(), logits)
        torch.testing.assert_close(hard_grad, soft_grad)


class TestLogisticNormal:
    @pytest.mark.parametrize("labeled", [False, True])
    def test_bound_and_surrogate_match_the_formula_by_hand(
        self, labeled: bool, fixed_noise
    ) -> None:
        model = evaluation_model("LogisticNormal")
        x, y = binary_images(4, seed=3), labels(4, seed=3)
        subgraph = Subgraph.LABELED if labeled else Subgraph.UNLABELED
        path = model.labeled(x, y, ANNEALED) if labeled else model.unlabeled(x, ANNEALED)

        hx, (mu_alpha, logcov2_alpha) = classifier_outputs(model, x, subgraph)
        if labeled:
            mu_alpha = mu_alpha + LABEL_SHIFT * onehot(y)
        eps = fixed_noise.normal(mu_alpha.shape) + EPS_MEAN
        v = mu_alpha + torch.exp(0.5 * logcov2_alpha) * eps
        log_alpha = log_softmax(SHARPENING * ANNEALED.sharpening * v)
        kl_alpha = gaussian_kl(mu_alpha, logcov2_alpha)
        kl_z, nll_x = z_terms(model, log_alpha.exp(), hx, x, subgraph, fixed_noise)
        nll = nll_x - (log_alpha * onehot(y)).sum(-1) if labeled else nll_x
        surrogate = ANNEALED.kl_alpha * kl_alpha + ANNEALED.kl_z * kl_z + nll
        torch.testing.assert_close(path.bound, kl_alpha + kl_z + nll)
        torch.testing.assert_close(path.surrogate, surrogate)
        assert_same_gradients(model, path.surrogate, surrogate)

    @pytest.mark.parametrize("eps_mean", [None, 0.0])
    def test_noise_has_mean_eps_mean_one_by_default(
        self, eps_mean: float | None, monkeypatch
    ) -> None:
        """With the N(0, 1) draw fixed at 0, v = mu + eps_mean * sigma; the default mean is 1."""
        params = {} if eps_mean is None else {"eps_mean": eps_mean}
        model = make_model("LogisticNormal", **params)
        monkeypatch.setattr(SeedRandom, "randn_like", lambda self, like: torch.zeros_like(like))
        mu, logcov2 = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(1)).double()
        shift = EPS_MEAN if eps_mean is None else eps_mean
        expected = log_softmax(SHARPENING * (mu + shift * torch.exp(0.5 * logcov2)))
        torch.testing.assert_close(model.sample_log_alpha(mu, logcov2, Annealing()), expected)

    def test_evaluation_classifier_is_softmax_of_mu_alpha(self) -> None:
        model = evaluation_model("LogisticNormal")
        x = binary_images(4, seed=3)
        _, (mu_alpha, _) = classifier_outputs(model, x, Subgraph.CLASSIFIER)
        expected = log_softmax(mu_alpha)
        torch.testing.assert_close(model.classifier_log_probs(x, Annealing()), expected)
        torch.testing.assert_close(model.classifier_log_probs(x, ANNEALED), expected)

    def test_training_classifier_is_a_sharpened_sample(self, fixed_noise) -> None:
        model = make_model("LogisticNormal").train()
        model.classifier.dropout = 0.0  # so only the alpha draw is random
        x = binary_images(4, seed=3)
        _, (mu_alpha, logcov2_alpha) = classifier_outputs(model, x, Subgraph.CLASSIFIER)
        eps = fixed_noise.normal(mu_alpha.shape) + EPS_MEAN
        v = mu_alpha + torch.exp(0.5 * logcov2_alpha) * eps
        expected = log_softmax(SHARPENING * ANNEALED.sharpening * v)
        torch.testing.assert_close(model.classifier_log_probs(x, ANNEALED), expected)

    @torch.no_grad()
    def test_training_classifier_draws_afresh_each_call(self) -> None:
        model = make_model("LogisticNormal").train()
        model.classifier.dropout = 0.0
        x = binary_images(4, seed=3)
        first = model.classifier_log_probs(x, Annealing())
        assert not torch.allclose(first, model.classifier_log_probs(x, Annealing()))


class TestLogGamma:
    @pytest.mark.parametrize("labeled", [False, True])
    def test_bound_and_score_function_surrogate(self, labeled: bool, fixed_noise) -> None:
        model = evaluation_model("LogGamma")
        x, y = binary_images(4, seed=3), labels(4, seed=3)
        subgraph = Subgraph.LABELED if labeled else Subgraph.UNLABELED
        path = model.labeled(x, y, ANNEALED) if labeled else model.unlabeled(x, ANNEALED)

        hx, (raw,) = classifier_outputs(model, x, subgraph)
        beta = clipped(raw).exp()
        if labeled:
            beta = beta + onehot(y)
        asked = fixed_noise.concentrations[-1]
        assert not asked.requires_grad  # no gradient through the sample
        torch.testing.assert_close(asked, beta.detach())
        u = fixed_noise.log_gamma(beta)
        alpha = F.softmax(SHARPENING * ANNEALED.sharpening * u, dim=-1)
        b0 = torch.tensor(BETA_PRIOR, dtype=torch.float64)
        kl_lg = (torch.lgamma(b0) - torch.lgamma(beta) - (b0 - beta) * torch.digamma(beta)).sum(-1)
        log_q_u = (beta * u - u.exp() - torch.lgamma(beta)).sum(-1)
        kl_z, nll_x = z_terms(model, alpha, hx, x, subgraph, fixed_noise)
        nll = nll_x
        if labeled:
            nll = nll + torch.digamma(beta.sum(-1)) - (torch.digamma(beta) * onehot(y)).sum(-1)
        f = ANNEALED.kl_z * kl_z + nll_x
        surrogate = ANNEALED.kl_alpha * kl_lg + ANNEALED.kl_z * kl_z + nll + f.detach() * log_q_u
        torch.testing.assert_close(path.bound, kl_lg + kl_z + nll)
        torch.testing.assert_close(path.surrogate, surrogate)
        assert_same_gradients(model, path.surrogate, surrogate)


@pytest.mark.parametrize("name", VAE_MODELS)
@torch.no_grad()
def test_reported_bound_leaves_out_the_score_function_term(name: str, fixed_noise) -> None:
    model = evaluation_model(name)
    x, y = binary_images(4, seed=3), labels(4, seed=3)
    paths = {
        "unlabeled": model.unlabeled(x, Annealing()),
        "labeled": model.labeled(x, y, Annealing()),
    }
    for path_name, path in paths.items():
        has_score = name == "LogGamma" or (name == "ApproxM2" and path_name == "unlabeled")
        if has_score:
            assert (path.surrogate != path.bound).all(), path_name
        else:
            torch.testing.assert_close(path.surrogate, path.bound, msg=path_name)


class TestLogGammaSampler:
    N_DRAWS = 200_000
    CONCENTRATIONS = [
        [math.exp(-5)] * 10,
        [0.01, 0.5, 2.0, 10.0] * 2 + [math.exp(-5), math.exp(5)],
        [math.exp(-5)] * 9 + [math.exp(5)],
        [math.exp(5)] * 10,
    ]

    @pytest.mark.parametrize("concentration", CONCENTRATIONS)
    def test_softmax_of_the_draws_is_dirichlet(self, concentration: list[float]) -> None:
        beta = torch.tensor(concentration, dtype=torch.float64)
        u = sample_log_gamma(beta.expand(1, self.N_DRAWS, 10), SeedRandom([0]))[0]
        alpha = F.softmax(u, dim=-1)
        mean = beta / beta.sum()
        var = mean * (1 - mean) / (beta.sum() + 1)
        # Five standard errors: of the mean from the Dirichlet variance, of the variance from
        # the spread of the squared deviations.
        mean_error = (var / self.N_DRAWS).sqrt()
        squared_deviations = (alpha - alpha.mean(0)) ** 2
        var_error = squared_deviations.std(0) / math.sqrt(self.N_DRAWS)
        assert ((alpha.mean(0) - mean).abs() < 5 * mean_error).all()
        assert ((alpha.var(0) - var).abs() < 5 * var_error).all()

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_finite_far_below_the_smallest_float_at_the_smallest_concentration(
        self, dtype: torch.dtype
    ) -> None:
        # A direct Gamma(e^-5) draw falls below the smallest normal float (log -87 in float32,
        # -708 in float64) about every other time in float32 and once in 100 in float64: it then
        # underflows (log -inf) or is clamped there. Drawn in log space, u goes on to about -2,000.
        concentration = torch.full((1, self.N_DRAWS, 10), math.exp(-5), dtype=dtype)
        u = sample_log_gamma(concentration, SeedRandom([0]))
        assert u.dtype == dtype
        assert torch.isfinite(u).all()
        assert u.min() < 2 * math.log(torch.finfo(dtype).tiny)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_log_gamma_draws_have_the_digamma_mean(self, dtype: torch.dtype) -> None:
        beta = torch.tensor([math.exp(-5), 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, math.exp(5)])
        beta = beta.to(dtype)
        u = sample_log_gamma(beta.expand(1, self.N_DRAWS, 10), SeedRandom([0]))[0]
        standard_error = (torch.polygamma(1, beta) / self.N_DRAWS).sqrt()  # var log G = trigamma
        assert ((u.mean(0) - torch.digamma(beta)).abs() < 5 * standard_error).all()

    def test_no_gradient_flows_through_the_draw(self) -> None:
        beta = torch.full((1, 3, 10), 0.5, dtype=torch.float64, requires_grad=True)
        assert not sample_log_gamma(beta, SeedRandom([0])).requires_grad


def test_gumbel_noise_is_standard_gumbel() -> None:
    n_draws = 200_000
    g = gumbel_noise(torch.empty(1, n_draws, dtype=torch.float64), SeedRandom([0]))
    assert torch.isfinite(g).all()
    euler_gamma, var = 0.5772156649, math.pi**2 / 6
    assert abs(g.mean().item() - euler_gamma) < 5 * math.sqrt(var / n_draws)
    squared_deviations = (g - g.mean()) ** 2
    assert abs(g.var().item() - var) < 5 * squared_deviations.std().item() / math.sqrt(n_draws)


@pytest.fixture(scope="module")
def mnist_batches(prepared_mnist: Path):
    """100 unlabeled and 100 labeled binarised MNIST images (float32, as training uses)."""
    arrays = data.load(prepared_mnist)
    pixels = torch.from_numpy(arrays["train_x"][:200]).float() / 256
    x = torch.bernoulli(pixels, generator=torch.Generator().manual_seed(0))
    return x[None, :100], x[None, 100:], torch.from_numpy(arrays["train_y"][None, 100:200])


@pytest.mark.parametrize("weight_scale", [1.0, 100.0])
@pytest.mark.parametrize("name", list(MODELS))
def test_finite_objective_and_gradients(name: str, weight_scale: float, mnist_batches) -> None:
    """Also with the first head's weights scaled by 100: about half the logits pass the clip."""
    params = {"sharpening": 3.0} if name in SHARPENED_MODELS else {}
    model = build_model(name, params, 0.25, 128.0, 0.05, [0]).train()
    with torch.no_grad():
        model.classifier.outputs[0].weight *= weight_scale
    result = model(*mnist_batches, Annealing())
    assert torch.isfinite(result.objective).all()
    for metric, value in result.metrics.items():
        assert torch.isfinite(value).all(), metric
    result.objective.sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


TRAIN_SEED = 2
REDUCED_SIZES = {"train": 2000, "valid": 500, "test": 200}
# 40 steps of 50 at a higher rate than the original's, with the classifier weight at full strength
# from step 2 (the original ramps it from 0.01 over 50,000 steps).
SHORT_RUN = {
    "epochs": 0,
    "steps_per_epoch": 40,
    "eval_every": 1,
    "batch_size": 50,
    "lr": 1e-3,
    "anneal_classifier_steps": 1,
}
# The score-function terms have no baseline (docs/original.md 7.15): at the original weight of 128
# they give the shared trunk ~5x (ApproxM2) and ~20x (LogGamma) the classifier's gradient, and 40
# steps leave LogGamma near chance. A 16x weight lets the classifier learn in that time.
SCORE_FUNCTION_CLASSIFIER_WEIGHT = 2048.0
RUN_SHARPENING = {"GumbelSoftmaxM2": 3.0}  # the others' runs use 1.0 (docs/original.md 6.2)
# Chance is 0.1; with these settings every model reached 0.60-0.73 on each of 4-6 seeds tried.
MIN_VALID_ACCURACY = 0.4


@pytest.fixture(scope="module")
def reduced_mnist(prepared_mnist: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A .npz of the first 2,000 training, 500 validation and 200 test images, and its split."""
    arrays = data.load(prepared_mnist)
    reduced = {key: values[: REDUCED_SIZES[key.split("_")[0]]] for key, values in arrays.items()}
    directory = tmp_path_factory.mktemp("reduced_mnist")
    data.write_arrays(directory / "mnist.npz", reduced)
    write_split(reduced["train_y"], TRAIN_SEED, directory / "split.json")
    return directory / "mnist.npz", directory / "split.json"


@pytest.mark.parametrize("name", list(MODELS))
def test_short_training_beats_chance(name: str, reduced_mnist, tmp_path: Path) -> None:
    settings = dict(SHORT_RUN)
    if name in SHARPENED_MODELS:
        settings["params"] = {"sharpening": RUN_SHARPENING.get(name, 1.0)}
    if name in SCORE_FUNCTION_MODELS:
        settings["classifier_weight"] = SCORE_FUNCTION_CLASSIFIER_WEIGHT
    cfg = TrainConfig.from_dict({"run": name, "model": name, "seed": TRAIN_SEED, **settings})
    out = tmp_path / "run.h5"
    train(cfg, *reduced_mnist, out, torch.device("cpu"), log=lambda *args, **kwargs: None)
    valid_accuracy = runfile.read_history(out)["valid"]["accuracy"]
    assert valid_accuracy[-1] >= MIN_VALID_ACCURACY
