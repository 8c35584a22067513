"""Issue 18 probe: can a small convolutional net, in pixel space, learn to draw what a turn
brings into view in a few CPU minutes, where the latent transformer draws smears?

    MINWM_THREADS=1 python scripts/experiments/fill_net_probe.py --out runs/fill_probe --pairs 4000 --steps 3000

Pairs of rendered frames of the training layouts (scene seeds 0..99, every scene kind): a
source view and a target view from the same place turned 10–60° (and a small step), the
source warped into the target through its true depth with never-seen pixels blank
(:func:`~minwm_env.warp.warp_image_depth`, ``fill="blank"``). The net sees the warp and its
validity and draws the target; the loss is L1 on never-seen pixels (and, with ``--adversarial
W``, W × a hinge patch-GAN term there). Held-out layouts (100+) give the picture: warp, the
net's fill, truth, for turns of growing size, and L1 on never-seen pixels against the
row-mean baseline (each never-seen row the mean colour of that row's seen pixels).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from minwm_env import camera
from minwm_env.codec import from_uint8, to_uint8
from minwm_env.threads import configure_process
from minwm_env.warp import warp_image_depth
from minwm_env.world.paths import PATH_KINDS, random_path
from minwm_env.world.renderer import SceneRenderers
from minwm_env.world.scenes import SCENE_NAMES

INTRINSICS = (0.8660254037844386, 0.8660254037844386, 0.5, 0.5)  # the renderer's 60° field of view


def render_pairs(num_pairs: int, seed: int, scene_seeds: range, size: int = 64, turns=(10.0, 60.0),
                 progress: bool = True) -> dict[str, torch.Tensor]:
    """``num_pairs`` (warp with validity (N, 4, H, W), truth (N, 3, H, W)) in [-1, 1]."""
    rng = random.Random(f"fill-pairs-{seed}")
    warps, truths, angles = [], [], []
    renderers = SceneRenderers(size)
    k = torch.tensor([INTRINSICS], dtype=torch.float32)
    for _ in tqdm(range(num_pairs), desc="render pairs", disable=not progress):
        scene, renderer = renderers(rng.choice(SCENE_NAMES), rng.choice(scene_seeds))
        path = random_path(scene, 2, kind=rng.choice(PATH_KINDS), seed=rng.randrange(1 << 30))
        source_c2w = path.world_c2w()[0]
        angle = rng.uniform(*turns) * rng.choice((-1, 1))
        delta = torch.tensor([0.0, 0.0, rng.uniform(0.0, 0.3), angle, rng.uniform(-8, 8), 0.0])
        target_c2w = (torch.as_tensor(source_c2w, dtype=torch.float64) @ camera.delta_to_matrix(delta)).numpy()
        source = from_uint8(torch.as_tensor(renderer.render(source_c2w)))[None]
        depth = torch.as_tensor(renderer.render_depth(source_c2w), dtype=torch.float32)[None]
        depth = depth.nan_to_num(posinf=1e4).clamp(min=1e-3)
        warped = warp_image_depth(source, depth, torch.as_tensor(source_c2w)[None],
                                  torch.as_tensor(target_c2w)[None, None], k, fill="blank", with_validity=True)
        warps.append(warped[0, :, 0])
        truths.append(from_uint8(torch.as_tensor(renderer.render(target_c2w))))
        angles.append(abs(angle))
    return {"warp": torch.stack(warps), "truth": torch.stack(truths), "angle": torch.tensor(angles)}


class FillNet(nn.Module):
    """A small U-Net from (warp, validity) to RGB; a global colour summary joins at the bottom."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        def block(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU(),
                                 nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU())
        self.down = nn.ModuleList([block(5, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w)])
        self.globe = nn.Linear(4 * w, 4 * w)
        self.up = nn.ModuleList([block(8 * w, 4 * w), block(6 * w, 2 * w), block(3 * w, w)])
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, warp: torch.Tensor) -> torch.Tensor:
        height = warp.shape[-2]
        rows = torch.linspace(-1, 1, height, device=warp.device).view(1, 1, height, 1).expand(
            warp.shape[0], 1, height, warp.shape[-1])
        x = torch.cat([warp, rows], 1)
        skips = []
        for i, layer in enumerate(self.down):
            x = layer(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        x = x + self.globe(x.mean((2, 3)))[:, :, None, None]
        for layer, skip in zip(self.up, reversed(skips[:-1])):
            x = layer(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        drawn = torch.tanh(self.out(x))
        validity = warp[:, 3:4]
        return validity * warp[:, :3] + (1 - validity) * drawn


class Critic(nn.Module):
    """A patch critic on (image, validity): one logit per 8 × 8-pixel cell."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(nn.Conv2d(4, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, 2 * w, 4, 2, 1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, image, validity):
        return self.net(torch.cat([image, validity], 1))[:, 0]


def row_mean_fill(warp: torch.Tensor) -> torch.Tensor:
    """The free baseline: each never-seen pixel takes the mean colour of its row's seen pixels."""
    validity = warp[:, 3:4]
    seen = (warp[:, :3] * validity).sum(-1, keepdim=True) / validity.sum(-1, keepdim=True).clamp_min(1e-6)
    return validity * warp[:, :3] + (1 - validity) * seen


def unseen_l1(a, b, validity) -> float:
    weight = 1 - validity
    return float(((a - b).abs() * weight).sum() / (3 * weight.sum()).clamp_min(1e-6))


def picture(net, pairs, out: Path, columns: int = 8) -> None:
    import imageio.v3 as iio
    order = torch.argsort(pairs["angle"])[torch.linspace(0, len(pairs["angle"]) - 1, columns).long()]
    with torch.no_grad():
        drawn = net(pairs["warp"][order])
    rows = [pairs["warp"][order][:, :3], row_mean_fill(pairs["warp"][order]), drawn, pairs["truth"][order]]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    image = to_uint8(grid[None, :, None])[0, 0].numpy()  # (H, W, 3)
    iio.imwrite(out, np.kron(image, np.ones((2, 2, 1), np.uint8)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/fill_probe")
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--adversarial", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default=None, help="start from this fill_net.pt (and the critic.pt beside it)")
    parser.add_argument("--pairs-from", default=None, help="train on this pairs.pt (another run's) instead of rendering")
    args = parser.parse_args(argv)
    configure_process()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.pairs_from) if args.pairs_from else out / "pairs.pt"
    if args.pairs_from and not cache.exists():
        raise FileNotFoundError(f"--pairs-from {cache}: no such file")
    if cache.exists():
        data = torch.load(cache)
    else:
        data = {"train": render_pairs(args.pairs, args.seed, range(100)),
                "held_out": render_pairs(args.held_out, args.seed + 1, range(100, 116))}
        torch.save(data, cache)
    torch.manual_seed(args.seed)
    net = FillNet(args.width)
    if args.init:
        net.load_state_dict(torch.load(args.init))
    critic = Critic() if args.adversarial > 0 else None
    if critic is not None and args.init and (Path(args.init).parent / "critic.pt").exists():
        critic.load_state_dict(torch.load(Path(args.init).parent / "critic.pt"))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.999) if critic else (0.9, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.5, 0.999)) if critic else None
    train, held = data["train"], data["held_out"]
    log = open(out / "metrics.jsonl", "a")
    start = time.time()
    for step in tqdm(range(args.steps), desc="fill net"):
        index = torch.randint(len(train["warp"]), (args.batch_size,))
        warp, truth = train["warp"][index], train["truth"][index]
        flip = torch.rand(args.batch_size) < 0.5
        warp, truth = torch.where(flip[:, None, None, None], warp.flip(-1), warp), \
            torch.where(flip[:, None, None, None], truth.flip(-1), truth)
        validity = warp[:, 3:4]
        drawn = net(warp)
        unseen = 1 - validity
        loss = ((drawn - truth).abs() * unseen).sum() / (3 * unseen.sum()).clamp_min(1)
        record = {"step": step, "l1": float(loss.detach())}
        if critic is not None:
            weight = F.avg_pool2d(unseen, 8)[:, 0]
            fake = critic(drawn, validity)
            adversarial = -(fake * weight).sum() / weight.sum().clamp_min(1)
            loss = loss + args.adversarial * adversarial
            record["adversarial"] = float(adversarial.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if critic is not None:
            real, fake = critic(truth, validity), critic(drawn.detach(), validity)
            hinge = ((F.relu(1 - real) + F.relu(1 + fake)) * weight).sum() / weight.sum().clamp_min(1)
            opt_c.zero_grad(set_to_none=True)
            hinge.backward()
            opt_c.step()
            record["critic"] = float(hinge.detach())
        if step % 100 == 0 or step == args.steps - 1:
            with torch.no_grad():
                drawn = net(held["warp"])
            record.update(held_l1=unseen_l1(drawn, held["truth"], held["warp"][:, 3:4]),
                          row_mean_l1=unseen_l1(row_mean_fill(held["warp"]), held["truth"], held["warp"][:, 3:4]),
                          seconds=round(time.time() - start, 1))
            log.write(json.dumps(record) + "\n")
            log.flush()
        if step % 500 == 0 or step == args.steps - 1:
            picture(net, held, out / "held_out.png")
            torch.save(net.state_dict(), out / "fill_net.pt")
            if critic is not None:
                torch.save(critic.state_dict(), out / "critic.pt")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
