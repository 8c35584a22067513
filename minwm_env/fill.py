"""A world model's fill net: draws, in pixels, what the warped reference never saw.

The warped reference (:mod:`minwm_env.warp`) reprojects the last clean frame into each new
camera; what that frame never showed (the strip a turn brings into view, what was behind an
object walked past) has no colour to carry. Left as the warp's border streak, the latent
transformer turned it into 4×4 blocks of one smeared colour in every scene (docs/default_model.md).
:class:`FillNet` is a small pixel-space U-Net that reads the warp, blank where it never saw, and
its validity, and draws those pixels; seen pixels pass through unchanged. Trained with an L1
term and a patch critic on rendered turns of the training layouts (``python -m
minwm_train.fill``), it draws walls, floor, sky and objects where a mean-regressing model
draws the row's average (docs/design.md §6). ``ModelSettings.warp_fill = "net"`` puts it in the
reference; the transformer's gated output then corrects what it drew.

A model folder keeps it in ``fill/`` (``config.json``, ``model.safetensors`` and the sha256
manifest), loaded with the rest of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .integrity import load_small_net, save_small_net

FILL_DIR = "fill"
LEVELS = 3
"""halvings of the resolution (64 px: 8 px at the bottom)"""


@dataclass(frozen=True)
class FillConfig:
    width: int = 16
    """channels at full resolution (doubled twice on the way down); a multiple of 8 (group norm)"""

    def __post_init__(self):
        if self.width < 8 or self.width % 8:
            raise ValueError(f"fill net width must be a positive multiple of 8, got {self.width}")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class FillNet(nn.Module):
    """A U-Net from a warp in [-1, 1] with its validity (B, 4, H, W), never-seen pixels blank,
    to the filled frame (B, 3, H, W): ``validity · warp + (1 − validity) · drawn``. A row
    coordinate joins the input (the floor is low, the sky high), and the bottom level's mean
    joins every bottom cell (the scene's palette reaches the whole strip)."""

    def __init__(self, config: FillConfig = FillConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.down = nn.ModuleList([_block(5, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w)])
        self.globe = nn.Linear(4 * w, 4 * w)
        self.up = nn.ModuleList([_block(8 * w, 4 * w), _block(6 * w, 2 * w), _block(3 * w, w)])
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, warp: torch.Tensor) -> torch.Tensor:
        drawn = self.draw(warp)
        validity = warp[:, 3:4]
        return validity * warp[:, :3] + (1 - validity) * drawn

    def draw(self, warp: torch.Tensor) -> torch.Tensor:
        """What the net draws for every pixel of ``warp`` (B, 4, H, W) → (B, 3, H, W) in [-1, 1]."""
        batch, channels, height, width = warp.shape
        scale = 2 ** LEVELS
        if channels != 4 or height % scale or width % scale:
            raise ValueError(f"the fill net takes (B, 4, H, W) warps with validity, sides divisible by {scale}; "
                             f"got {tuple(warp.shape)}")
        rows = torch.linspace(-1, 1, height, device=warp.device, dtype=warp.dtype)
        x = torch.cat([warp, rows.view(1, 1, height, 1).expand(batch, 1, height, width)], 1)
        skips = []
        for i, layer in enumerate(self.down):
            x = layer(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        x = x + self.globe(x.mean((2, 3)))[:, :, None, None]
        for layer, skip in zip(self.up, reversed(skips[:-1])):
            x = layer(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        return torch.tanh(self.out(x))

    @torch.no_grad()
    def fill(self, colours: torch.Tensor, validity: torch.Tensor) -> torch.Tensor:
        """``colours`` (B, 3, N, H, W) in [-1, 1], not premultiplied (a border-fill warp's), with
        ``validity`` (B, 1, N, H, W) → ``validity · colours + (1 − validity) · drawn``, what they
        never saw drawn. The net reads the colours blanked by validity, as in training, whatever
        a never-seen pixel carried (a border streak); frames that saw everything skip the net."""
        batch, _, frames, height, width = colours.shape
        flat = torch.cat([colours, validity], 1).transpose(1, 2).reshape(batch * frames, 4, height, width)
        todo = (flat[:, 3] < 1).flatten(1).any(1).nonzero()[:, 0]
        if not len(todo):
            return colours
        picked = flat[todo]
        seen = picked[:, 3:]
        drawn = self.draw(torch.cat([picked[:, :3] * seen, seen], 1).to(self.out.weight.dtype)).to(flat.dtype)
        filled = flat[:, :3].clone()
        filled[todo] = seen * picked[:, :3] + (1 - seen) * drawn
        return filled.reshape(batch, frames, 3, height, width).transpose(1, 2)

    def save(self, folder: str | Path) -> None:
        save_small_net(self, self.config, folder)


def load_fill_model(folder: str | Path) -> FillNet:
    """A :class:`FillNet` saved by :meth:`FillNet.save` (weights checked against the folder's
    manifest and the config's shapes)."""
    return load_small_net(folder, FillConfig, FillNet, "fill")
