"""Layers shared by the LLM recommenders."""

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS = {"leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "relu": nn.ReLU}


class ProjectionMLP(nn.Sequential):
    """Linear -> LayerNorm -> activation -> Linear, with xavier-normal weights (LLM-SRec's f_* MLPs).

    ``norm=False`` drops the LayerNorm (LLaRA's and CoLLM's projectors have none).
    """

    def __init__(self, in_dim, hidden_dim, out_dim, activation="leaky_relu", norm=True):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            *([nn.LayerNorm(hidden_dim)] if norm else []),
            _ACTIVATIONS[activation](),
            nn.Linear(hidden_dim, out_dim),
        )
        for module in self:
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)


def uniformity(x):
    """Mean over pairs i<j of exp(-2 ||x_i - x_j||^2) (LLM-SRec Eq. 3, no log); 0 for one row."""
    if x.shape[0] < 2:
        return x.new_zeros(())
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean()


def distillation(student, teacher):
    """MSE between L2-normalised vectors, averaged over every element (LLM-SRec Eq. 2 as coded)."""
    return F.mse_loss(F.normalize(student, dim=-1), F.normalize(teacher, dim=-1))


class RunningNorm(nn.Module):
    """Feature-wise centring (``scale=False``) or standardising (``scale=True``) of a read-out
    with running statistics, as BatchNorm's eval mode does, but in training as well.

    Every forward subtracts the running mean (and divides by the running standard deviation), so a
    row's output never depends on the other rows of its batch, a batch of one is fine, and training
    and evaluation apply the same map. A training forward that builds a gradient first folds its
    batch into the statistics: a cumulative average over the first ``1 / momentum`` batches, then
    an exponential one. Forwards in eval mode or under ``no_grad`` (evaluation caches, diagnostics)
    leave them alone. The statistics are detached: gradients reach the input unchanged (scaled).
    Before any statistics exist (``count`` 0) the map is the identity.
    """

    def __init__(self, dim, scale=False, momentum=0.1, eps=1e-5):
        super().__init__()
        self.scale, self.momentum, self.eps = scale, momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))  # used only with scale=True
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # batches folded in

    def forward(self, x):
        if self.training and torch.is_grad_enabled() and x.shape[0] > 1:
            with torch.no_grad():
                weight = max(self.momentum, 1.0 / (int(self.count) + 1))
                self.running_mean.lerp_(x.mean(0).to(self.running_mean.dtype), weight)
                if self.scale:
                    self.running_var.lerp_(x.var(0).to(self.running_var.dtype), weight)
                self.count += 1
        if not self.count:
            return x
        x = x - self.running_mean.to(x.dtype)
        return x * torch.rsqrt(self.running_var.to(x.dtype) + self.eps) if self.scale else x

    def extra_repr(self):
        return f"{self.running_mean.shape[0]}, scale={self.scale}, momentum={self.momentum}"
