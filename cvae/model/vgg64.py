"""The VGG-64 encoder and decoder of SVG (Denton & Fergus 2018), with a width multiplier.

The encoder returns the frame code ``h`` and skip features at 4 scales (64, 32, 16, 8 px); the
decoder mirrors it and concatenates those skips. ``width=1`` is the published architecture.
"""
from __future__ import annotations

import torch
from torch import nn

BASE_CHANNELS = (64, 128, 256, 512)


def channels(width: float) -> list[int]:
    return [max(8, round(c * width)) for c in BASE_CHANNELS]


def vgg_layer(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


class Encoder(nn.Module):
    def __init__(self, g_dim: int, width: float = 1.0, nc: int = 3) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels(width)
        self.c1 = nn.Sequential(vgg_layer(nc, c0), vgg_layer(c0, c0))
        self.c2 = nn.Sequential(vgg_layer(c0, c1), vgg_layer(c1, c1))
        self.c3 = nn.Sequential(vgg_layer(c1, c2), vgg_layer(c2, c2), vgg_layer(c2, c2))
        self.c4 = nn.Sequential(vgg_layer(c2, c3), vgg_layer(c3, c3), vgg_layer(c3, c3))
        self.c5 = nn.Sequential(nn.Conv2d(c3, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[N, 3, 64, 64] -> code [N, g_dim] and skips [h1 (64px), h2 (32), h3 (16), h4 (8)]."""
        h1 = self.c1(x)
        h2 = self.c2(self.pool(h1))
        h3 = self.c3(self.pool(h2))
        h4 = self.c4(self.pool(h3))
        h5 = self.c5(self.pool(h4))
        return h5.flatten(1), [h1, h2, h3, h4]


class Decoder(nn.Module):
    def __init__(self, g_dim: int, width: float = 1.0, nc: int = 3) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels(width)
        self.upc1 = nn.Sequential(nn.ConvTranspose2d(g_dim, c3, 4, 1, 0), nn.BatchNorm2d(c3), nn.LeakyReLU(0.2, inplace=True))
        self.upc2 = nn.Sequential(vgg_layer(c3 * 2, c3), vgg_layer(c3, c3), vgg_layer(c3, c2))
        self.upc3 = nn.Sequential(vgg_layer(c2 * 2, c2), vgg_layer(c2, c2), vgg_layer(c2, c1))
        self.upc4 = nn.Sequential(vgg_layer(c1 * 2, c1), vgg_layer(c1, c0))
        self.upc5 = nn.Sequential(vgg_layer(c0 * 2, c0), nn.ConvTranspose2d(c0, nc, 3, 1, 1), nn.Sigmoid())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, g: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Code [N, g_dim] and the encoder's skips -> frame [N, 3, 64, 64] in [0, 1]."""
        d = self.upc1(g[:, :, None, None])
        d = self.upc2(torch.cat([self.up(d), skips[3]], 1))
        d = self.upc3(torch.cat([self.up(d), skips[2]], 1))
        d = self.upc4(torch.cat([self.up(d), skips[1]], 1))
        return self.upc5(torch.cat([self.up(d), skips[0]], 1))
