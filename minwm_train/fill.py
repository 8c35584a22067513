"""Train a world model's fill net (:mod:`minwm_env.fill`) on rendered turns of the training layouts.

    python -m minwm_train.fill --out runs/fill --num-pairs 3000 --l1-steps 2000 --steps 20000
    python -m minwm_train.fill --out runs/fill --attach runs/v6/stage2c/model
    python -m minwm_train.fill --out runs/fill_roll --rollout-steps 3 --num-turns 800 --steps 40000

Pairs of frames rendered in the worlds and layouts the world model's clips come from (every
scene kind, scene seeds 0..99): a source view, and a target view from the same place turned
10–60° (with a small step and tilt). The source is warped into the target through its true
depth, never-seen pixels blank (:func:`~minwm_env.warp.warp_image_depth`), and the net learns
to draw the target's never-seen pixels from that warp and its validity: an L1 term alone for
``--l1-steps``, then with a hinge patch critic that sees (image, validity) and is scored on the
8×8-pixel cells that hold never-seen pixels (``--adversarial``, the generator's weight of it).
L1 alone draws each row's average; the critic is what makes it draw walls, floor, sky and
objects (docs/default_model.md). Frames are flipped left-right half the time.

Trained on pairs only, the net always draws next to a rendered frame; in a stream it draws next
to its own drawing of the chunk before, and extends what it drew (a cylinder at the edge of its
strip becomes a row of cylinders along a turn). ``--rollout-steps K`` trains on turns of K
steps of 8–20° instead (``turns.npz``, ``--num-turns``): each step warps the previous step's
filled frame through that view's true depth into the next camera and the net draws again, the
losses of every step averaged, the gradient running back through the warps into earlier
drawings (:func:`unroll`). The log then adds ``held_turn_l1``: the last step's L1 on what the
start frame never saw, on held-out turns.
``--orbit S`` makes a share S of those turns orbit (strafe while turning, :func:`render_turns`):
a turn on the spot never opens a hole beside a near object, and a net that never saw one paints
it in the object's colour. ``--depth-model FOLDER`` warps those turns through a depth net's
depth of each frame warped (the start, then the net's own drawings), as the stream does, instead
of the true depth: the depth net's blurred object edges open holes *inside* objects, which a net
trained on true-depth warps fills with background (an orbited cylinder torn apart).

Resumable: ``checkpoint/`` (the net, the critic, both optimisers, the step) is written every
``--checkpoint-every`` steps and read back on the next run with the same ``--out``; the pairs
are rendered once (``pairs.npz``). ``model/`` (what ``--attach`` copies into a world model
folder's ``fill/``) follows every checkpoint. Held-out layouts (100..115) give the figures and
the picture (``held_out.png``: warp, the row-mean baseline, the net, the truth): L1 on never-seen
pixels against each row's mean colour of its seen pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from minwm_env import camera
from minwm_env.codec import from_uint8, to_uint8
from minwm_env.fill import FILL_DIR, FillConfig, FillNet, load_fill_model
from minwm_env.integrity import attach_small_net
from minwm_env.threads import configure_process
from minwm_env.warp import FAR_DEPTH, warp_image_depth
from minwm_env.world.paths import PATH_KINDS, random_path
from minwm_env.world.renderer import SceneRenderers
from minwm_env.world.scenes import SCENE_NAMES

from .engine import load_torch_file

PAIRS_FILE = "pairs.npz"
TURNS_FILE = "turns.npz"
CHECKPOINT_DIR = "checkpoint"
INTRINSICS = (0.8660254037844386, 0.8660254037844386, 0.5, 0.5)
"""the renderer's 60° field of view, normalised (the default model's intrinsics)"""
HELD_OUT_SEEDS = range(100, 116)


def render_pairs(num_pairs: int, seed: int, scene_seeds: range, size: int = 64, turns=(10.0, 60.0),
                 progress: bool = True) -> dict[str, np.ndarray]:
    """``num_pairs`` turns: ``warp`` (N, H, W, 3) uint8 (never-seen pixels 0), ``seen`` (N, H, W)
    bool, ``truth`` (N, H, W, 3) uint8 and ``angle`` (N,) degrees; reproducible from ``seed``."""
    rng = random.Random(f"fill-pairs-{seed}")
    out = {"warp": [], "seen": [], "truth": [], "angle": []}
    renderers = SceneRenderers(size)
    k = _intrinsics(1)
    for _ in tqdm(range(num_pairs), desc="render pairs", unit="pair", disable=not progress):
        scene, renderer = renderers(rng.choice(SCENE_NAMES), rng.choice(scene_seeds))
        path = random_path(scene, 2, kind=rng.choice(PATH_KINDS), seed=rng.randrange(1 << 30))
        source_c2w = path.world_c2w()[0]
        angle = rng.uniform(*turns) * rng.choice((-1, 1))
        delta = torch.tensor([0.0, 0.0, rng.uniform(0.0, 0.3), angle, rng.uniform(-8, 8), 0.0])
        target_c2w = (torch.as_tensor(source_c2w, dtype=torch.float64) @ camera.delta_to_matrix(delta)).numpy()
        source = from_uint8(torch.as_tensor(renderer.render(source_c2w)))[None]
        depth = torch.as_tensor(renderer.render_depth(source_c2w), dtype=torch.float32)[None]
        warped = warp_image_depth(source, finite_depth(depth),
                                  torch.as_tensor(source_c2w)[None], torch.as_tensor(target_c2w)[None, None], k,
                                  fill="blank", with_validity=True)[0, :, 0]
        out["warp"].append(to_uint8(warped[None, :3, None])[0, 0].numpy())
        out["seen"].append(warped[3].numpy() > 0.5)
        out["truth"].append(renderer.render(target_c2w))
        out["angle"].append(abs(angle))
    return {k: np.stack(v) for k, v in out.items()}


def render_turns(num_turns: int, seed: int, scene_seeds: range, steps: int, size: int = 64, turn=(8.0, 20.0),
                 orbit: float = 0.0, progress: bool = True) -> dict[str, np.ndarray]:
    """``num_turns`` turns of ``steps`` steps each, one direction a turn, as a stream takes them:
    ``frames`` (N, 1 + steps, H, W, 3) uint8, ``depth`` (N, 1 + steps, H, W) float32 (z-depth,
    ``inf`` for the sky) and ``c2w`` (N, 1 + steps, 4, 4) float64; each step turns 8–20° (with a
    small step forward and tilt); reproducible from ``seed``.

    A share ``orbit`` of them orbits instead: each step strafes 0.08–0.3 sideways and turns to
    keep a point 0.8–2.5 ahead in view, as the camera circles an object. A turn on the spot
    never looks behind anything; an orbit shows what a near object hid (the hole opens beside it,
    and the truth there is the background, not the object's colour), so the net learns to draw
    disocclusions as well as the strip at the frame's edge. An orbit that would leave the free
    floor is drawn again from another start (after 20 tries, the turn turns on the spot)."""
    if steps < 1:
        raise ValueError(f"a turn needs at least one step, got {steps}")
    if not 0.0 <= orbit <= 1.0:
        raise ValueError(f"orbit must be a share in [0, 1], got {orbit}")
    rng = random.Random(f"fill-turns-{seed}")
    out = {"frames": [], "depth": [], "c2w": []}
    renderers = SceneRenderers(size)
    for _ in tqdm(range(num_turns), desc="render turns", unit="turn", disable=not progress):
        scene, renderer = renderers(rng.choice(SCENE_NAMES), rng.choice(scene_seeds))
        orbiting = orbit > 0 and rng.random() < orbit
        for attempt in range(20 if orbiting else 1):
            path = random_path(scene, 2, kind=rng.choice(PATH_KINDS), seed=rng.randrange(1 << 30))
            poses = [torch.as_tensor(path.world_c2w()[0], dtype=torch.float64)]
            sign = rng.choice((-1, 1))
            pivot = rng.uniform(0.8, 2.5) if orbiting else 0.0
            for _ in range(steps):
                if orbiting:
                    side = sign * rng.uniform(0.08, 0.3)  # strafing s at distance d turns the bearing by s / d
                    delta = torch.tensor([side, 0.0, 0.0, -math.degrees(side / pivot), rng.uniform(-3, 3), 0.0])
                else:
                    delta = torch.tensor([0.0, 0.0, rng.uniform(0.0, 0.1), sign * rng.uniform(*turn),
                                          rng.uniform(-3, 3), 0.0])
                poses.append(poses[-1] @ camera.delta_to_matrix(delta))
            if not orbiting or all(scene.is_free(float(c[0, 3]), float(c[1, 3]), 0.3) for c in poses):
                break
            orbiting = attempt < 18  # the last try turns on the spot
        out["frames"].append(np.stack([renderer.render(c.numpy()) for c in poses]))
        out["depth"].append(np.stack([renderer.render_depth(c.numpy()) for c in poses]).astype(np.float32))
        out["c2w"].append(torch.stack(poses).numpy())
    return {k: np.stack(v) for k, v in out.items()}


def _intrinsics(rows: int) -> torch.Tensor:
    return torch.tensor([INTRINSICS], dtype=torch.float32).expand(rows, 4)


def finite_depth(depth: torch.Tensor) -> torch.Tensor:
    """z-depth as the warps here take it: the sky (inf) far away, nothing nearer than 1e-3."""
    return depth.nan_to_num(posinf=FAR_DEPTH).clamp(min=1e-3)


def predicted_depth(depth_net, images: torch.Tensor) -> torch.Tensor:
    """A depth net's z-depth (B, H, W) float32 of frames in [-1, 1] (B, 3, H, W), made finite as
    the true depth is (:func:`finite_depth`); :meth:`~minwm_env.depth.DepthNet.depth` runs
    without gradient."""
    return finite_depth(depth_net.depth(images).float())


def unroll(net: FillNet, turns: dict[str, torch.Tensor], depth_net=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stream a batch of turns through the fill net, as the world model does chunk after chunk:
    each step warps the previous step's filled frame (the start: the rendered frame) through that
    view's true depth into the next camera, never-seen pixels blank, and the net draws them.
    ``turns``: ``frames`` (B, 1 + K, 3, H, W) in [-1, 1], ``depth`` (B, 1 + K, H, W), ``c2w``
    (B, 1 + K, 4, 4). Returns per step (filled frame (B, 3, H, W), validity (B, 1, H, W)); the
    graph runs through every step, so a step's loss reaches the drawing it was warped from.

    ``depth_net`` (a :class:`~minwm_env.depth.DepthNet`): each step warps through that net's
    depth of the frame it warps (the start frame, then the net's own drawings), as the world
    model's stream does, instead of the true depth: its errors open holes inside objects (a
    blurred edge tears an orbited cylinder), which the net must then learn to close in the
    object's colour, where true-depth warps only open holes beside objects."""
    frames, depth, c2w = turns["frames"], turns["depth"], turns["c2w"]
    k = _intrinsics(len(frames))
    image, out = frames[:, 0], []
    for step in range(1, frames.shape[1]):
        source_depth = depth[:, step - 1] if depth_net is None else predicted_depth(depth_net, image)
        warped = warp_image_depth(image, source_depth, c2w[:, step - 1], c2w[:, step, None], k, fill="blank",
                                  with_validity=True)[:, :, 0]
        validity = warped[:, 3:].detach()  # where the warp lands: no gradient to follow
        image = net(torch.cat([warped[:, :3] * validity, validity], 1))
        out.append((image, validity))
    return out


def turn_tensors(turns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Turns as :func:`unroll` reads them (depth clamped finite: the sky far away)."""
    depth = finite_depth(torch.from_numpy(turns["depth"]))
    return {"frames": from_uint8(torch.from_numpy(turns["frames"])), "depth": depth,
            "c2w": torch.from_numpy(turns["c2w"])}


def evaluate_turns(net: FillNet, held: dict[str, torch.Tensor], depth_net=None) -> dict[str, float]:
    """L1 at the last step of the held-out turns on the pixels the start frame never saw (what
    the stream drew over all its steps, its own drawings warped along), against the truth
    (streamed as :func:`unroll` streams with ``depth_net``; the pixels are the true depth's)."""
    with torch.no_grad():
        last, _ = unroll(net, held, depth_net)[-1]
        direct = warp_image_depth(held["frames"][:, 0], held["depth"][:, 0], held["c2w"][:, 0], held["c2w"][:, -1, None],
                                  _intrinsics(len(last)), fill="blank", with_validity=True)[:, 3:, 0]
    return {"held_turn_l1": unseen_l1(last, held["frames"][:, -1], direct)}


def as_tensors(pairs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Pairs as the net reads them: ``warp`` (N, 4, H, W) in [-1, 1] with validity (never-seen
    pixels 0 in every channel), ``truth`` (N, 3, H, W) in [-1, 1], ``angle`` (N,)."""
    seen = torch.from_numpy(pairs["seen"]).float()[:, None]
    warp = from_uint8(torch.from_numpy(pairs["warp"])) * seen
    return {"warp": torch.cat([warp, seen], 1), "truth": from_uint8(torch.from_numpy(pairs["truth"])),
            "angle": torch.from_numpy(pairs["angle"]).float()}


class Critic(nn.Module):
    """A patch critic on (image, validity): one logit per 8 × 8-pixel cell."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(nn.Conv2d(4, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, 2 * w, 4, 2, 1),
                                 nn.LeakyReLU(0.2), nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, image: torch.Tensor, validity: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, validity], 1))[:, 0]


def row_mean_fill(warp: torch.Tensor) -> torch.Tensor:
    """The free baseline: each never-seen pixel takes the mean colour of its row's seen pixels."""
    validity = warp[:, 3:4]
    seen = (warp[:, :3] * validity).sum(-1, keepdim=True) / validity.sum(-1, keepdim=True).clamp_min(1e-6)
    return validity * warp[:, :3] + (1 - validity) * seen


def unseen_l1(a: torch.Tensor, b: torch.Tensor, validity: torch.Tensor) -> float:
    """Mean absolute difference of ``a`` and ``b`` (N, 3, H, W) over never-seen pixels."""
    weight = 1 - validity
    return float(((a - b).abs() * weight).sum() / (3 * weight.sum()).clamp_min(1e-6))


@torch.no_grad()
def evaluate(net: FillNet, held: dict[str, torch.Tensor]) -> dict[str, float]:
    drawn = torch.cat([net(held["warp"][i:i + 64]) for i in range(0, len(held["warp"]), 64)])
    validity = held["warp"][:, 3:4]
    return {"held_l1": unseen_l1(drawn, held["truth"], validity),
            "row_mean_l1": unseen_l1(row_mean_fill(held["warp"]), held["truth"], validity)}


@torch.no_grad()
def picture(net: FillNet, held: dict[str, torch.Tensor], path: Path, columns: int = 8, scale: int = 2) -> None:
    """Held-out turns of growing size, one column each: warp, row-mean fill, the net's, truth."""
    import imageio.v3 as iio
    order = torch.argsort(held["angle"])[torch.linspace(0, len(held["angle"]) - 1, columns).long()]
    warp = held["warp"][order]
    rows = [warp[:, :3], row_mean_fill(warp), net(warp), held["truth"][order]]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, 4H, columns·W)
    image = to_uint8(grid[None, :, None])[0, 0].numpy()
    iio.imwrite(path, np.kron(image, np.ones((scale, scale, 1), np.uint8)))


class FillTrainer:
    """The fill net, its critic and their optimisers, stepped and checkpointed."""

    def __init__(self, config: FillConfig, lr: float, critic_lr: float, adversarial: float, l1_steps: int,
                 seed: int):
        torch.manual_seed(seed)
        self.net, self.critic = FillNet(config), Critic()
        self.adversarial, self.l1_steps, self.seed = adversarial, l1_steps, seed
        # beta1 0.5 once the critic plays (the usual GAN setting); the L1 phase uses Adam's default
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, betas=(0.5, 0.999))
        self.step = 0

    @property
    def playing(self) -> bool:
        """Whether the critic plays at this step."""
        return self.adversarial > 0 and self.step >= self.l1_steps

    def _losses(self, drawn: torch.Tensor, truth: torch.Tensor, validity: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's L1 on never-seen pixels and, once the critic plays, its adversarial
        term on the critic cells that hold never-seen pixels."""
        unseen = 1 - validity
        losses = {"l1": ((drawn - truth).abs() * unseen).sum() / (3 * unseen.sum()).clamp_min(1)}
        if self.playing:
            weight = F.avg_pool2d(unseen, 8)[:, 0]  # the share of each critic cell never seen
            losses["adversarial"] = -(self.critic(drawn, validity) * weight).sum() / weight.sum().clamp_min(1)
        return losses

    def _update(self, losses: list[dict[str, torch.Tensor]], critic_inputs: list[tuple]) -> dict[str, float]:
        """One optimiser step of the net on the mean of ``losses``, then one of the critic on
        ``critic_inputs`` ((truth, drawn, validity) each)."""
        if self.playing:
            for group in self.optimizer.param_groups:  # beta1 0.5 once the critic plays
                group["betas"] = (0.5, 0.999)
        record = {name: float(sum(float(x[name].detach()) for x in losses) / len(losses)) for name in losses[0]}
        loss = sum(x["l1"] + self.adversarial * x.get("adversarial", 0.0) for x in losses) / len(losses)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.playing:
            hinge = 0.0
            for truth, drawn, validity in critic_inputs:
                weight = F.avg_pool2d(1 - validity, 8)[:, 0]
                real, fake = self.critic(truth, validity), self.critic(drawn.detach(), validity)
                hinge = hinge + ((F.relu(1 - real) + F.relu(1 + fake)) * weight).sum() / weight.sum().clamp_min(1)
            hinge = hinge / len(critic_inputs)
            self.critic_optimizer.zero_grad(set_to_none=True)
            hinge.backward()
            self.critic_optimizer.step()
            record["critic"] = float(hinge.detach())
        self.step += 1
        record["step"] = self.step  # steps done
        return record

    def _batch(self, size: int, batch_size: int) -> tuple[torch.Generator, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        return generator, torch.randint(size, (batch_size,), generator=generator)

    def train_step(self, train: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
        """One step on a batch of pairs (a rendered view warped into a turned camera)."""
        generator, index = self._batch(len(train["warp"]), batch_size)
        warp, truth = train["warp"][index], train["truth"][index]
        flip = (torch.rand(batch_size, generator=generator) < 0.5)[:, None, None, None]
        warp, truth = torch.where(flip, warp.flip(-1), warp), torch.where(flip, truth.flip(-1), truth)
        validity = warp[:, 3:4]
        self.net.train()
        drawn = self.net(warp)
        return self._update([self._losses(drawn, truth, validity)], [(truth, drawn, validity)])

    def rollout_step(self, turns: dict[str, torch.Tensor], batch_size: int, depth_net=None) -> dict[str, float]:
        """One step on a batch of turns streamed through the net (:func:`unroll`, through
        ``depth_net``'s depth if given): every step's losses, averaged, through every step's
        drawing, so the net learns from what its own drawing becomes when it is warped along and
        drawn on again, as in a stream."""
        _, index = self._batch(len(turns["frames"]), batch_size)
        batch = {name: value[index] for name, value in turns.items()}
        self.net.train()
        steps = [(truth, drawn, validity) for (drawn, validity), truth in
                 zip(unroll(self.net, batch, depth_net), batch["frames"][:, 1:].unbind(1))]
        return self._update([self._losses(drawn, truth, validity) for truth, drawn, validity in steps], steps)

    def save(self, folder: Path) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, module in (("net", self.net), ("critic", self.critic)):
            safetensors.torch.save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                                        tmp / f"{name}.safetensors")
        torch.save({"net": self.optimizer.state_dict(), "critic": self.critic_optimizer.state_dict()},
                   tmp / "optimizers.pt")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "width": self.net.config.width}) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    def load(self, folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        if state["width"] != self.net.config.width:
            raise ValueError(f"{folder} holds a fill net of width {state['width']}, this run asks for "
                             f"{self.net.config.width}: pass --width {state['width']} or another --out")
        self.net.load_state_dict(safetensors.torch.load_file(folder / "net.safetensors"))
        self.critic.load_state_dict(safetensors.torch.load_file(folder / "critic.safetensors"))
        optimizers = load_torch_file(folder / "optimizers.pt")
        self.optimizer.load_state_dict(optimizers["net"])
        self.critic_optimizer.load_state_dict(optimizers["critic"])
        self.step = int(state["step"])


def train(out: Path, pairs: dict[str, np.ndarray], held: dict[str, np.ndarray], *, steps: int, l1_steps: int,
          batch_size: int = 16, lr: float = 2e-4, critic_lr: float = 2e-4, adversarial: float = 0.05,
          width: int = FillConfig.width, seed: int = 0, checkpoint_every: int = 500, progress: bool = True,
          turns: dict[str, np.ndarray] | None = None, held_turns: dict[str, np.ndarray] | None = None,
          depth_net=None) -> FillNet:
    """Train (or go on training) the fill net in ``out`` up to ``steps`` steps; returns it. With
    ``turns`` (:func:`render_turns`) every step streams a batch of them through the net
    (:meth:`FillTrainer.rollout_step`) instead of a batch of pairs, and ``held_turns`` adds
    the last step's never-seen L1 (:func:`evaluate_turns`) to the log; ``depth_net``: those
    streams warp through its depth (:func:`unroll`)."""
    if depth_net is not None and turns is None:
        raise ValueError("a depth net streams turns through its depth: it needs turns (--rollout-steps)")
    if steps < 1 or batch_size < 1 or l1_steps < 0 or checkpoint_every < 1 or adversarial < 0:
        raise ValueError(f"need steps, batch_size, checkpoint_every >= 1 and l1_steps, adversarial >= 0; got "
                         f"{steps}, {batch_size}, {checkpoint_every}, {l1_steps}, {adversarial}")
    trainer = FillTrainer(FillConfig(width), lr, critic_lr, adversarial, l1_steps, seed)
    checkpoint = out / CHECKPOINT_DIR
    if (checkpoint / "state.json").is_file():
        trainer.load(checkpoint)
        print(f"resuming from {checkpoint} at step {trainer.step}")
    train_t, held_t = as_tensors(pairs), as_tensors(held)
    turns_t = None if turns is None else turn_tensors(turns)
    held_turns_t = None if held_turns is None else turn_tensors(held_turns)
    start = time.time()
    with open(out / "metrics.jsonl", "a") as log:
        bar = tqdm(total=steps, initial=min(trainer.step, steps), desc="fill net", unit="step", disable=not progress)
        while trainer.step < steps:
            if turns_t is None:
                record = trainer.train_step(train_t, batch_size)
            else:
                record = trainer.rollout_step(turns_t, batch_size, depth_net)
            bar.update(1)
            last = trainer.step == steps
            if trainer.step % 100 == 0 or last:
                trainer.net.eval()
                record.update(evaluate(trainer.net, held_t), seconds=round(time.time() - start, 1))
                if held_turns_t is not None:
                    record.update(evaluate_turns(trainer.net, held_turns_t, depth_net))
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(held_l1=f"{record['held_l1']:.3f}")
            if trainer.step % checkpoint_every == 0 or last:
                trainer.save(checkpoint)
                trainer.net.eval().save(out / "model")
                picture(trainer.net, held_t, out / "held_out.png")
        bar.close()
    return trainer.net.eval()


def load_or_render_pairs(out: Path, num_pairs: int, num_held_out: int, seed: int, progress: bool):
    """``pairs.npz`` in ``out`` (rendered on the first run): the training and held-out pairs."""
    cache = out / PAIRS_FILE
    if cache.is_file():
        data = np.load(cache)
        if len(data["train_warp"]) == num_pairs and len(data["held_warp"]) == num_held_out:
            return ({k[6:]: data[k] for k in data.files if k.startswith("train_")},
                    {k[5:]: data[k] for k in data.files if k.startswith("held_")})
    pairs = render_pairs(num_pairs, seed, range(100), progress=progress)
    held = render_pairs(num_held_out, seed + 1, HELD_OUT_SEEDS, progress=progress)
    np.savez(cache, **{f"train_{k}": v for k, v in pairs.items()}, **{f"held_{k}": v for k, v in held.items()})
    return pairs, held


def load_or_render_turns(out: Path, num_turns: int, num_held_out: int, steps: int, seed: int, progress: bool,
                         orbit: float = 0.0):
    """``turns.npz`` in ``out`` (rendered when missing, of other sizes or another orbit share):
    training and held-out turns."""
    cache = out / TURNS_FILE
    if cache.is_file():
        data = np.load(cache)
        same = float(data["orbit"]) if "orbit" in data.files else 0.0
        if (data["train_frames"].shape[:2] == (num_turns, 1 + steps) and len(data["held_frames"]) == num_held_out
                and same == orbit):
            return ({k[6:]: data[k] for k in data.files if k.startswith("train_")},
                    {k[5:]: data[k] for k in data.files if k.startswith("held_")})
    turns = render_turns(num_turns, seed, range(100), steps, orbit=orbit, progress=progress)
    held = render_turns(num_held_out, seed + 1, HELD_OUT_SEEDS, steps, orbit=orbit, progress=progress)
    np.savez(cache, orbit=np.float64(orbit), **{f"train_{k}": v for k, v in turns.items()},
             **{f"held_{k}": v for k, v in held.items()})
    return turns, held


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minwm_train.fill", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.partition("\n\n")[2])
    parser.add_argument("--out", default="runs/fill", help="folder: pairs.npz, checkpoint/, model/, metrics.jsonl")
    parser.add_argument("--num-pairs", type=int, default=3000)
    parser.add_argument("--held-out", type=int, default=256, help="pairs on held-out layouts (100..115)")
    parser.add_argument("--steps", type=int, default=20000, help="total steps (a rerun goes on up to this)")
    parser.add_argument("--l1-steps", type=int, default=2000, help="steps before the critic plays")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--critic-lr", type=float, default=2e-4)
    parser.add_argument("--adversarial", type=float, default=0.05, help="the critic's weight (0: L1 only)")
    parser.add_argument("--width", type=int, default=FillConfig.width)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rollout-steps", type=int, default=0,
                        help="K > 0: train on turns of K steps streamed through the net (its own drawings warped "
                             "along and drawn on again) instead of pairs")
    parser.add_argument("--num-turns", type=int, default=1000, help="turns rendered for --rollout-steps")
    parser.add_argument("--held-out-turns", type=int, default=64, help="held-out turns (layouts 100..115)")
    parser.add_argument("--orbit", type=float, default=0.0,
                        help="share of the turns that orbit (strafe while turning: holes beside near objects)")
    parser.add_argument("--depth-model", default=None,
                        help="with --rollout-steps: warp the turns through this depth net's depth (a world model's "
                             "depth/ folder) instead of the true depth, as the stream does")
    parser.add_argument("--attach", default=None, help="copy the trained net into this world model folder's fill/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.num_pairs < 1 or args.held_out < 1:
            raise ValueError(f"need --num-pairs and --held-out >= 1, got {args.num_pairs}, {args.held_out}")
        if args.rollout_steps < 0 or (args.rollout_steps and (args.num_turns < 1 or args.held_out_turns < 1)):
            raise ValueError(f"need --rollout-steps >= 0 and, with it, --num-turns and --held-out-turns >= 1; got "
                             f"{args.rollout_steps}, {args.num_turns}, {args.held_out_turns}")
        if not 0.0 <= args.orbit <= 1.0:
            raise ValueError(f"--orbit is a share of the turns, in [0, 1]; got {args.orbit}")
        if args.depth_model and not args.rollout_steps:
            raise ValueError("--depth-model warps the turns of --rollout-steps; pairs warp through the true depth")
        depth_net = None
        if args.depth_model:
            from minwm_env.depth import load_depth_model
            depth_net = load_depth_model(args.depth_model).eval()  # before rendering: a bad folder fails fast
        configure_process(None)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pairs, held = load_or_render_pairs(out, args.num_pairs, args.held_out, args.seed, not args.no_progress)
        turns = held_turns = None
        if args.rollout_steps:
            turns, held_turns = load_or_render_turns(out, args.num_turns, args.held_out_turns, args.rollout_steps,
                                                     args.seed, not args.no_progress, orbit=args.orbit)
        net = train(out, pairs, held, steps=args.steps, l1_steps=args.l1_steps, batch_size=args.batch_size,
                    lr=args.lr, critic_lr=args.critic_lr, adversarial=args.adversarial, width=args.width,
                    seed=args.seed, checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                    turns=turns, held_turns=held_turns, depth_net=depth_net)
        figures = evaluate(net, as_tensors(held))
        print(f"held-out pairs ({len(held['warp'])}): never-seen L1 {figures['held_l1']:.4f} "
              f"(row-mean fill {figures['row_mean_l1']:.4f}); picture {out / 'held_out.png'}")
        if args.attach:
            model_dir = out / "model"
            attached = attach_small_net(model_dir, args.attach, FILL_DIR, load_fill_model)
            print(f"attached {model_dir} to {attached}")
    except (ValueError, FileNotFoundError) as err:
        print(f"python -m minwm_train.fill: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
