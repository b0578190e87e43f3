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
