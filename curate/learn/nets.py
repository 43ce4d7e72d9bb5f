"""Small image classifiers in plain torch (no torchvision, no timm), sized from the data.

Both nets take ``x`` of shape ``(B, C, H, W)`` (float, normalized) and return logits ``(B, num_classes)``;
``C``, ``H`` and ``W`` come from the dataset, so one definition serves 28x28 grayscale and 64x64 RGB alike.

- ``small-cnn``: VGG-style stages of two 3x3 conv-BN-ReLU and a 2x2 max-pool, until the map is at most 8
  pixels on a side, then flatten -> 256 -> dropout -> classes. On 28x28 input: 32 -> 64 channels, 7x7 map,
  about 0.9M parameters and 15M multiply-adds per image.
- ``tiny-cnn``: ``small-cnn`` with half the channels (16 -> 32): about a quarter of the multiply-adds and 3x the
  training throughput on CPU; for many short fits (clean's k-fold models).
- ``resnet-mini``: a CIFAR-style ResNet: a 3x3 stem and three stages of pre-activation-free BasicBlocks
  (widths 32/64/128, stride 2 between stages), global average pooling and a linear head (about 0.7M
  parameters). Inputs of 96 pixels or more get a strided stem and a max-pool first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ARCHS = ("small-cnn", "tiny-cnn", "resnet-mini", "resnet-mini-wide", "linear")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """VGG-style CNN: ``[conv-bn-relu x2, maxpool] x stages`` -> flatten -> 256 -> dropout -> logits.

    Args:
        in_channels: image channels ``C`` (1 or 3).
        num_classes: number of classes ``K``.
        size: input ``(H, W)``; decides the number of pooling stages (until a side is <= 8).
        width: channels of the first stage; doubled each stage, capped at 256.
        dropout: dropout before the last layer.
    """

    def __init__(self, in_channels: int, num_classes: int, size: tuple[int, int], width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        h, w = size
        cin, cout = in_channels, width
        while True:
            layers += _conv_bn(cin, cout) + _conv_bn(cout, cout) + [nn.MaxPool2d(2)]
            h, w, cin = h // 2, w // 2, cout
            cout = min(cout * 2, 256)
            if min(h, w) <= 8 or len(layers) >= 7 * 6:
                break
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout / 2),
            nn.Linear(cin * h * w, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K)`` logits."""
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResNetMini(nn.Module):
    """A small CIFAR-style ResNet: stem, three stages of BasicBlocks, global average pool, linear head.

    Args:
        in_channels: image channels ``C``.
        num_classes: number of classes ``K``.
        size: input ``(H, W)``; 96 pixels or more get a stride-2 stem plus max-pool (4x less compute).
        widths: channels per stage.
        blocks: BasicBlocks per stage.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        size: tuple[int, int],
        widths: tuple[int, ...] = (32, 64, 128),
        blocks: tuple[int, ...] = (1, 1, 1),
    ) -> None:
        super().__init__()
        big = min(size) >= 96
        stem: list[nn.Module] = _conv_bn(in_channels, widths[0], 2 if big else 1)
        if big:
            stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (wd, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                stages.append(BasicBlock(cin, wd, 2 if (i > 0 and j == 0) else 1))
                cin = wd
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, BasicBlock):  # zero-init the last BN of each block: every block starts as identity
                nn.init.zeros_(m.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K)`` logits."""
        return self.head(self.stages(self.stem(x)))


class Linear(nn.Module):
    """Logistic regression on the flattened pixels (a baseline, and the fastest net for tests)."""

    def __init__(self, in_channels: int, num_classes: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * size[0] * size[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K)`` logits."""
        return self.fc(x.flatten(1))


def build(arch: str, in_channels: int, num_classes: int, size: tuple[int, int], **kwargs: Any) -> nn.Module:
    """Construct a net by name (one of ``ARCHS``) for ``(C, H, W) = (in_channels, *size)`` inputs.

    Raises:
        ValueError: unknown ``arch`` (the CLI turns it into a usage error before any work starts).
    """
    if arch == "small-cnn":
        return SmallCNN(in_channels, num_classes, size, **kwargs)
    if arch == "tiny-cnn":  # half the channels: about 3x the training images/s of small-cnn on CPU (clean's fold models)
        return SmallCNN(in_channels, num_classes, size, width=16, **kwargs)
    if arch == "resnet-mini":
        return ResNetMini(in_channels, num_classes, size, **kwargs)
    if arch == "resnet-mini-wide":
        return ResNetMini(in_channels, num_classes, size, widths=(64, 128, 256), blocks=(1, 1, 1), **kwargs)
    if arch == "linear":
        return Linear(in_channels, num_classes, size)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
