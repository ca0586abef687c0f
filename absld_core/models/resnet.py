"""CIFAR-style ResNet-18 and PreAct ResNet-18 (3x3 stem, no max-pool), any input size."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class ResNet(nn.Module):
    def __init__(self, block, layers=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3,
                 preact: bool = False, width: int = 64):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = None if preact else nn.BatchNorm2d(width)
        stages, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2 ** i
            for j in range(n):
                stages.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*stages)
        self.bn_final = nn.BatchNorm2d(cin) if preact else None
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.bn_final(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


CHANNELS = 64  # the papers' first-stage channels of a ResNet-18


def resnet18(num_classes=10, in_channels=3, channels: int = CHANNELS):
    """channels: of the first stage (the stages have channels x 1, 2, 4, 8)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, width=channels)


def preact_resnet18(num_classes=10, in_channels=3, channels: int = CHANNELS):
    return ResNet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels, preact=True, width=channels)
