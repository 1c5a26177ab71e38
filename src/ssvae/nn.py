"""Building blocks shared by every model (spec section 2): layers, networks and the basic terms."""

import math
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import nn

N_CLASSES = 10
N_PIXELS = 784
Z_DIM = 50
INIT_RANGE = 0.1  # every trainable tensor, BatchNorm gamma and beta included, starts U(-0.1, 0.1)
MAXOUT_PIECES = 4
LOGIT_CLIP = 5.0


class Subgraph(IntEnum):
    """The three sub-graphs: shared weights, separate BatchNorm statistics (spec 2.3)."""

    UNLABELED = 0  # p(x)
    LABELED = 1  # p(x,y)
    CLASSIFIER = 2  # q(y|x)


SUBGRAPH_NAMES = {
    Subgraph.UNLABELED: "p(x)",
    Subgraph.LABELED: "p(x,y)",
    Subgraph.CLASSIFIER: "q(y|x)",
}


class SubgraphBatchNorm(nn.Module):
    """BatchNorm with one shared affine pair and one set of running statistics per sub-graph.

    As in the original: eps 1e-3, biased batch variance in training, unbiased variance in the
    running estimate, and a first update that copies the batch statistics (momentum 0.05 after).
    """

    def __init__(self, width: int, momentum: float = 0.05, eps: float = 1e-3):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(width))
        self.beta = nn.Parameter(torch.empty(width))
        n_subgraphs = len(Subgraph)
        self.register_buffer("running_mean", torch.zeros(n_subgraphs, width))
        self.register_buffer("running_var", torch.ones(n_subgraphs, width))
        self.register_buffer("updated", torch.zeros(n_subgraphs, 1, dtype=torch.bool))

    def forward(self, x: torch.Tensor, subgraph: Subgraph) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x,
                self.running_mean[subgraph],
                self.running_var[subgraph],
                self.gamma,
                self.beta,
                training=False,
                eps=self.eps,
            )
        # torch's fused kernel, told momentum 1, writes the batch mean and unbiased variance into
        # these; the original's update rule then applies them (several times faster than
        # normalising by hand, forward and backward).
        batch_mean = x.new_zeros(x.shape[-1])
        batch_var = x.new_zeros(x.shape[-1])
        out = F.batch_norm(
            x,
            batch_mean,
            batch_var,
            self.gamma,
            self.beta,
            training=True,
            momentum=1.0,
            eps=self.eps,
        )
        self._update_running(subgraph, batch_mean, batch_var)
        return out

    @torch.no_grad()
    def _update_running(self, subgraph: Subgraph, mean, unbiased_var) -> None:
        first = self.updated[subgraph]  # torch.where keeps the update free of host syncs
        self.running_mean[subgraph] = torch.where(
            first, torch.lerp(self.running_mean[subgraph], mean, self.momentum), mean
        )
        self.running_var[subgraph] = torch.where(
            first, torch.lerp(self.running_var[subgraph], unbiased_var, self.momentum), unbiased_var
        )
        self.updated[subgraph] = True


class Maxout(torch.autograd.Function):
    """The max over the pieces (axis 1 of (batch, pieces, width)), whose gradient goes to every
    piece equal to the max, as Theano's does, through a mask kept from the forward pass; torch's
    max/amax backward costs 5-10x more on CPU."""

    @staticmethod
    def forward(ctx, pieces: torch.Tensor) -> torch.Tensor:
        out = pieces.amax(1)
        if ctx.needs_input_grad[0]:
            # Written into a float tensor: several times faster on CPU than a bool result.
            winners = torch.eq(pieces, out.unsqueeze(1), out=torch.empty_like(pieces))
            ctx.save_for_backward(winners)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (winners,) = ctx.saved_tensors
        return winners * grad.unsqueeze(1)


class MaxoutStack(nn.Module):
    """`n_layers` of Linear(in -> 4H) [-> BatchNorm] -> maxout of 4 units (spec 2.2).

    Unit j takes the max of pre-activations j, H+j, 2H+j and 3H+j, where the original takes
    4j..4j+3: a fixed relabelling of the 4H linear units, under which the model, its i.i.d.
    initialisation and BatchNorm (per unit) are unchanged. It puts the pieces on a middle axis,
    which torch reduces 5-20x faster than a last axis of 4.
    """

    def __init__(self, in_dim: int, width: int, n_layers: int, batchnorm: bool):
        super().__init__()
        self.width = width
        dims = [in_dim] + [width] * n_layers
        self.linears = nn.ModuleList(nn.Linear(d_in, MAXOUT_PIECES * width) for d_in in dims[:-1])
        self.norms = nn.ModuleList(
            SubgraphBatchNorm(MAXOUT_PIECES * width) for _ in range(n_layers if batchnorm else 0)
        )

    def forward(self, h: torch.Tensor, subgraph: Subgraph | None = None) -> torch.Tensor:
        for i, linear in enumerate(self.linears):
            h = linear(h)
            if self.norms:
                h = self.norms[i](h, subgraph)
            h = Maxout.apply(h.unflatten(-1, (MAXOUT_PIECES, self.width)))
        return h


class ClassifierNet(nn.Module):
    """q(y|x) network: input dropout -> h(x) trunk -> head -> linear output(s) (spec 2.5).

    `forward` returns the trunk features h(x) (which q(z|.) reuses) and the head outputs:
    one clipped logit vector for every model but LogisticNormal, which asks for two unclipped ones.
    """

    def __init__(self, dropout: float, n_outputs: int = 1, clip: bool = True):
        super().__init__()
        self.dropout = dropout
        self.clip = clip
        self.trunk = MaxoutStack(N_PIXELS, 300, n_layers=4, batchnorm=True)
        self.head = MaxoutStack(300, 300, n_layers=2, batchnorm=True)
        self.outputs = nn.ModuleList(nn.Linear(300, N_CLASSES) for _ in range(n_outputs))

    def hidden(self, x: torch.Tensor, subgraph: Subgraph) -> torch.Tensor:
        # A fresh dropout mask per call: the three sub-graphs see independent masks (spec 2.4).
        return self.trunk(input_dropout(x, self.dropout, self.training), subgraph)

    def heads(self, hx: torch.Tensor, subgraph: Subgraph) -> list[torch.Tensor]:
        h = self.head(hx, subgraph)
        outs = [output(h) for output in self.outputs]
        return [out.clamp(-LOGIT_CLIP, LOGIT_CLIP) for out in outs] if self.clip else outs


class ZEncoder(nn.Module):
    """q(z | a, x): embed the class code a, join it to h(x), 2 maxout+BN layers, mu and logvar."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(N_CLASSES, 300)
        self.stack = MaxoutStack(600, 300, n_layers=2, batchnorm=True)
        self.mu = nn.Linear(300, Z_DIM)
        self.logcov2 = nn.Linear(300, Z_DIM)

    def forward(self, a: torch.Tensor, hx: torch.Tensor, subgraph: Subgraph):
        h = self.stack(torch.cat([self.embed(a), hx], dim=-1), subgraph)
        return self.mu(h), self.logcov2(h)


class Decoder(nn.Module):
    """p(x | a, z): 4 maxout layers without BatchNorm, then Bernoulli logits over the pixels."""

    def __init__(self):
        super().__init__()
        self.stack = MaxoutStack(N_CLASSES + Z_DIM, 200, n_layers=4, batchnorm=False)
        self.out = nn.Linear(200, N_PIXELS)

    def forward(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.stack(torch.cat([a, z], dim=-1)))


def bernoulli_draw(p: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """1.0 with probability p, else 0.0, shaped like `like`: u < p with u ~ U[0, 1), compared
    straight into a float tensor, 2-3x faster on CPU than torch.bernoulli or a bool compare."""
    return torch.lt(torch.rand_like(like), p, out=torch.empty_like(like))


def input_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Keep each input with probability 1 - p and scale the kept ones by 1/(1 - p) (spec 2.4)."""
    if not training or p == 0:
        return x
    return x * bernoulli_draw(1 - p, x) / (1 - p)


def init_uniform_(module: nn.Module) -> None:
    """The original's init: every trainable tensor from U(-0.1, 0.1)."""
    with torch.no_grad():
        for param in module.parameters():
            param.uniform_(-INIT_RANGE, INIT_RANGE)


def gaussian_kl(mu: torch.Tensor, logcov2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logcov2)) || N(0, I)) per dimension (sum over the last axis for the total)."""
    return 0.5 * (logcov2.exp() + mu.square() - 1.0 - logcov2)


def categorical_kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || Uniform(K)) per example."""
    log_pi = F.log_softmax(logits, dim=-1)
    return (log_pi.exp() * log_pi).sum(-1) + math.log(logits.shape[-1])


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x) under independent Bernoullis with the given logits, per example."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def relaxed_one_hot(
    logits: torch.Tensor, noise: torch.Tensor, sharpening: float, straight_through: bool
) -> torch.Tensor:
    """softmax(s * (logits + noise)); straight-through: the one-hot of its argmax going forward
    and the soft sample's gradient going back (spec 3.4, 3.5)."""
    soft = F.softmax(sharpening * (logits + noise), dim=-1)
    if not straight_through:
        return soft
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def gumbel_noise(shape, like: torch.Tensor) -> torch.Tensor:
    """-log(-log u) with u ~ U(1e-10, 1 - 1e-10), as the original draws it."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device) * (1 - 2e-10) + 1e-10
    return -torch.log(-torch.log(u))


def sample_log_gamma(concentration: torch.Tensor) -> torch.Tensor:
    """log G with G ~ Gamma(concentration, 1), drawn in log space and without gradient.

    log G(b) = log G(b + 1) + log(U) / b: for small b the result is a large negative number
    rather than the log(0) = -inf a direct Gamma(b) draw underflows to (spec 7.16).
    """
    with torch.no_grad():
        # Unvalidated: checking the concentration would read it back to the host every step.
        boosted = torch.distributions.Gamma(concentration + 1, 1.0, validate_args=False).sample()
        log_uniform = -torch.empty_like(concentration).exponential_()
        return boosted.log() + log_uniform / concentration
