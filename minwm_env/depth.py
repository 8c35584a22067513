"""A world model's own depth: a small network that reads one RGB frame and gives its depth.

The warped reference (:mod:`minwm_env.warp`) reprojects the last clean frame into each new
camera. Through one plane 2 units ahead, that is exact for rotations and wrong for everything a
translation moves: an object walked up to stays too small, an orbited pillar slides with the
wall behind it. Through the frame's true depth the same reprojection is 7 dB closer on the
pixels the frame showed (held-out paths, ``benchmarks/depth_warp_probe.py``). The world model
does not get the truth's depth while it streams, only its own frames, so it predicts it:
:class:`DepthNet` maps a frame to its inverse depth (0 is the sky), trained on rendered frames
of the training layouts (``python -m minwm_train.depth``), and the warp splats through it
(``ModelSettings.warp_depth_source = "model"``, docs/design.md §6).

A model folder keeps it in ``depth/`` (``config.json``, ``model.safetensors`` and the sha256
manifest), loaded with the rest of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .integrity import load_small_net, save_small_net
from .warp import FAR_DEPTH

DEPTH_DIR = "depth"


@dataclass(frozen=True)
class DepthConfig:
    width: int = 16
    """channels at full resolution (doubled at each halving)"""
    levels: int = 3
    """halvings of the resolution (64 px: 8 px at the bottom)"""
    min_inverse_depth: float = 1.0 / 50.0
    """predicted inverse depths below this are the sky (inf)"""

    def __post_init__(self):
        if self.width < 1 or self.levels < 1:
            raise ValueError(f"depth net width and levels must be >= 1, got {self.width}, {self.levels}")
        if not self.min_inverse_depth > 0:
            raise ValueError(f"min_inverse_depth must be positive, got {self.min_inverse_depth}")


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(min(8, cout), cout), nn.GELU())


class DepthNet(nn.Module):
    """A U-Net from an RGB frame in [-1, 1] (B, 3, H, W), with two channels of pixel
    coordinates beside it (depth here depends on where in the image a pixel is: the floor),
    to inverse z-depth (B, H, W) >= 0, in 1 / world units."""

    def __init__(self, config: DepthConfig = DepthConfig()):
        super().__init__()
        self.config = config
        widths = [config.width * 2 ** i for i in range(config.levels + 1)]
        self.stem = _block(5, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1], stride=2) for i in range(config.levels))
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in range(config.levels))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        scale = 2 ** self.config.levels
        if height % scale or width % scale:
            raise ValueError(f"the depth net needs frames whose sides divide by {scale}, got {height}x{width}")
        ys = torch.linspace(-1, 1, height, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1, 1, width, device=images.device, dtype=images.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None].expand(batch, -1, -1, -1)
        x = self.stem(torch.cat([images, grid], dim=1))
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in reversed(self.up):
            x = up(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skips.pop()], dim=1))
        return F.softplus(self.head(x)[:, 0])

    @torch.no_grad()
    def depth(self, images: torch.Tensor) -> torch.Tensor:
        """z-depth (B, H, W) of frames in [-1, 1] (B, 3, H, W), ``inf`` where the net sees sky."""
        inverse = self(images.to(self.head.weight.dtype)).double()
        return torch.where(inverse < self.config.min_inverse_depth, torch.full_like(inverse, torch.inf),
                           1.0 / inverse.clamp_min(1.0 / FAR_DEPTH))

    def predict(self, frames) -> torch.Tensor:
        """z-depth (N, H, W) of uint8 frames (N, H, W, 3) (NumPy or torch)."""
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        images = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.depth(images.to(self.head.weight.device))

    def save(self, folder: str | Path) -> None:
        save_small_net(self, self.config, folder)


def load_depth_model(folder: str | Path) -> DepthNet:
    """A :class:`DepthNet` saved by :meth:`DepthNet.save` (weights checked against the folder's
    manifest and the config's shapes)."""
    return load_small_net(folder, DepthConfig, DepthNet, "depth")
