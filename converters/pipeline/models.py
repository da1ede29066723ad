"""Reference models: MLPs (digits, MNIST, LeNet-300-100) and LeNet-5, for ``--model converters.pipeline:NAME``."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU network with layers fc1, fc2, ...; flattens its input."""

    def __init__(self, sizes=(64, 256, 128, 10)):
        super().__init__()
        self.sizes = tuple(sizes)
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            setattr(self, f"fc{i + 1}", nn.Linear(a, b))

    def forward(self, x):
        x = x.flatten(1)
        n = len(self.sizes) - 1
        for i in range(n):
            x = getattr(self, f"fc{i + 1}")(x)
            if i < n - 1:
                x = torch.relu(x)
        return x


def digits_mlp() -> MLP:
    """64-256-128-10 for scikit-learn's 8x8 digits (``--model converters.pipeline:digits_mlp``)."""
    return MLP((64, 256, 128, 10))


def mnist_mlp() -> MLP:
    """784-1000-1000-500-200-10 for 28x28 MNIST / Fashion-MNIST (``converters.pipeline:mnist_mlp``)."""
    return MLP((784, 1000, 1000, 500, 200, 10))


def lenet300() -> MLP:
    """LeNet-300-100 (784-300-100-10), the paper's MNIST network."""
    return MLP((784, 300, 100, 10))


class LeNet5(nn.Module):
    """LeNet-5 (conv1, conv2, fc1..fc3) for 28x28 images, input N x 1 x 28 x 28 (or N x 28 x 28)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def lenet5() -> LeNet5:
    """LeNet-5 for 28x28 MNIST / Fashion-MNIST (``converters.pipeline:lenet5``)."""
    return LeNet5()
