"""Small networks for CPU work: MobileNetV2 (CIFAR variant) and a 0.29M-parameter CNN."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.body(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    """CIFAR variant: stride-1 stem and stride 1 in the second stage (32x32 keeps 4x4 at the end)."""
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, t, s if i == 0 else 1))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class SmallCNN(nn.Module):
    """Three conv stages (32-64-128 wide, BN, ReLU, 2x2 pooling) and a linear head: 0.29M parameters at width 32.

    norm='none' drops BatchNorm (convolutions get biases): batch-size independent, which makes a
    multi-process run comparable sample for sample with a single-process one."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"small_cnn norm must be 'batch' or 'none', got {norm!r}")

        def bn(c):
            return nn.BatchNorm2d(c) if norm == "batch" else nn.Identity()

        def stage(cin, cout, pool=True):
            b = norm != "batch"
            mods = [nn.Conv2d(cin, cout, 3, 1, 1, bias=b), bn(cout), nn.ReLU(inplace=True),
                    nn.Conv2d(cout, cout, 3, 1, 1, bias=b), bn(cout), nn.ReLU(inplace=True)]
            if pool:
                mods.append(nn.MaxPool2d(2, ceil_mode=True))
            return mods

        w = width
        self.features = nn.Sequential(*stage(in_channels, w), *stage(w, 2 * w), *stage(2 * w, 4 * w, pool=False))
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
