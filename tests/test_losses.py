"""LLM-SRec's loss terms on hand-computed cases."""

import math

import torch

from recbole_llmsrec.model.layers import ProjectionMLP, distillation, uniformity


def test_uniformity_hand_cases():
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert uniformity(same).item() == 1.0
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert math.isclose(uniformity(orthogonal).item(), math.exp(-4), rel_tol=1e-6)
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = (math.exp(-4) + math.exp(-8) + math.exp(-4)) / 3
    assert math.isclose(uniformity(three).item(), expected, rel_tol=1e-6)
    assert uniformity(torch.ones(1, 2)).item() == 0.0


def test_distillation_is_elementwise_mse_of_normalised_vectors():
    x = torch.tensor([[3.0, 0.0]])
    assert distillation(x, torch.tensor([[0.5, 0.0]])).item() == 0.0
    assert math.isclose(distillation(x, torch.tensor([[-2.0, 0.0]])).item(), 2.0)  # (2^2 + 0) / 2
    assert math.isclose(distillation(x, torch.tensor([[0.0, 7.0]])).item(), 1.0)  # (1 + 1) / 2


def test_projection_mlp_shape_and_init():
    torch.manual_seed(0)
    mlp = ProjectionMLP(4, 16, 3)
    assert mlp(torch.randn(5, 4)).shape == (5, 3)
    assert isinstance(mlp[1], torch.nn.LayerNorm) and isinstance(mlp[2], torch.nn.LeakyReLU)
