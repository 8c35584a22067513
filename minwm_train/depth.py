"""Train a world model's depth net (:mod:`minwm_env.depth`) on rendered frames of the training layouts.

    python -m minwm_train.depth --out runs/depth --num-frames 12000 --steps 3000
    python -m minwm_train.depth --out runs/depth --attach runs/v4/stage2c/model

Frames come from camera paths through the same worlds and layouts the world model's clips are
drawn from (every scene kind, scene seeds 0..99), one frame per latent frame of each path, with
the renderer's depth. The net regresses inverse depth (the quantity parallax is linear in; the
sky is 0) with an L1 loss, on frames flipped left-right half the time. The held-out share of
the frames gives the figures printed at the end: L1 of inverse depth and the fraction of pixels
within 25% of the true depth. ``--attach MODEL`` copies the trained net into a world model
folder's ``depth/`` (what ``warp_depth_source = "model"`` reads).

Resumable: ``checkpoint/state.pt`` is written every ``--checkpoint-every`` steps, and a rerun
with the same ``--out`` and ``--steps`` goes on from it (a long run can span sessions).
``--init FOLDER`` starts from a trained depth net instead of random weights (to train the
shipped one further, on more frames).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from minwm_env.depth import DEPTH_DIR, DepthConfig, DepthNet, load_depth_model
from minwm_env.integrity import attach_small_net
from minwm_env.threads import configure_process
from minwm_env.world.paths import PATH_KINDS, random_path
from minwm_env.world.renderer import SceneRenderers
from minwm_env.world.scenes import SCENE_NAMES

FRAMES_FILE = "frames.npz"
CHECKPOINT_FILE = "checkpoint/state.pt"


def render_frames(num_frames: int, seed: int = 0, num_scene_seeds: int = 100, per_path: int = 9,
                  size: int = 64, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``num_frames`` rendered frames (N, H, W, 3) uint8 and their inverse depth (N, H, W) float32
    (0: sky), ``per_path`` frames along each random path; reproducible from ``seed``."""
    rng = random.Random(f"depth-frames-{seed}")
    frames, inverse = [], []
    renderers = SceneRenderers(size, capacity=17)
    bar = tqdm(total=num_frames, desc="render", unit="frame", disable=not progress)
    while len(frames) < num_frames:
        scene, renderer = renderers(rng.choice(SCENE_NAMES), rng.randrange(num_scene_seeds))
        path = random_path(scene, per_path, kind=rng.choice(PATH_KINDS), seed=rng.randrange(1 << 30))
        for c2w in path.world_c2w()[: num_frames - len(frames)]:
            frames.append(renderer.render(c2w))
            inverse.append(1.0 / renderer.render_depth(c2w))  # inf → 0
            bar.update(1)
    bar.close()
    return np.stack(frames), np.stack(inverse).astype(np.float32)


def _images(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def evaluate(net: DepthNet, frames: np.ndarray, inverse: np.ndarray) -> dict[str, float]:
    """L1 of inverse depth, and the share of non-sky pixels whose predicted depth is within 25%
    of the truth's (sky pixels count as right when predicted as sky)."""
    net.eval()
    predicted = torch.cat([net(_images(frames[i:i + 64])) for i in range(0, len(frames), 64)])
    truth = torch.from_numpy(inverse)
    l1 = (predicted - truth).abs().mean().item()
    sky = truth == 0
    ratio = (predicted / truth.clamp_min(1e-6))
    close = torch.where(sky, predicted < net.config.min_inverse_depth, (ratio > 1 / 1.25) & (ratio < 1.25))
    return {"inverse_depth_l1": l1, "within_25pct": close.float().mean().item()}


def train_depth(frames: np.ndarray, inverse: np.ndarray, steps: int, batch_size: int = 32, lr: float = 2e-3,
                seed: int = 0, config: DepthConfig = DepthConfig(), progress: bool = True,
                checkpoint: Path | None = None, checkpoint_every: int = 500,
                init: DepthNet | None = None) -> DepthNet:
    """A :class:`DepthNet` trained on ``frames`` and their ``inverse`` depth (L1, cosine
    learning rate, left-right flips). ``init``: start from that net's weights (same config).
    ``checkpoint``: the run's folder; its ``checkpoint/state.pt`` keeps the net, the optimiser,
    the schedule, the batch generator and the step, written every ``checkpoint_every`` steps
    and read back when present, so an interrupted run goes on exactly where it stopped."""
    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"steps, batch_size and checkpoint_every must be >= 1, got {steps}, {batch_size}, "
                         f"{checkpoint_every}")
    torch.manual_seed(seed)
    net = DepthNet(config)
    if init is not None:
        if init.config != config:
            raise ValueError(f"--init's depth net has config {init.config}, this run asks for {config}")
        net.load_state_dict(init.state_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    start = 0
    state_file = None if checkpoint is None else Path(checkpoint) / CHECKPOINT_FILE
    if state_file is not None and state_file.is_file():
        try:
            state = torch.load(state_file, weights_only=False)
            steps_saved = state["steps"]
        except Exception as err:  # truncated, or not ours: say which file, keep nothing half-loaded
            raise ValueError(f"{state_file} is not a depth-training checkpoint ({err}); delete it to start over") \
                from err
        if steps_saved != steps:
            raise ValueError(f"{state_file} belongs to a run of {steps_saved} steps (its learning-rate schedule), "
                             f"not {steps}")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        start = state["step"]
        print(f"resuming from {state_file} at step {start}")
    images, targets = _images(frames), torch.from_numpy(inverse)
    bar = tqdm(range(start, steps), desc="depth", unit="step", disable=not progress)
    for step in bar:
        net.train()
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = images[index], targets[index]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = (net(x) - y).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if state_file is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "generator": generator.get_state(), "step": step + 1,
                        "steps": steps}, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)  # never a half-written checkpoint
    return net.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minwm_train.depth", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.partition("\n\n")[2])
    parser.add_argument("--out", default="runs/depth", help="folder: frames.npz (reused) and model/")
    parser.add_argument("--num-frames", type=int, default=12000)
    parser.add_argument("--held-out", type=float, default=0.05, help="share of the frames kept for the figures")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=DepthConfig.width)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=500,
                        help="steps between checkpoints (a rerun with the same --out and --steps goes on from the last)")
    parser.add_argument("--init", default=None, help="a depth model folder to start from (fine-tuning it)")
    parser.add_argument("--attach", default=None, help="copy the trained net into this world model folder's depth/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.held_out < 1 or args.num_frames < 20:
            raise ValueError(f"need --held-out in (0, 1) and --num-frames >= 20, got {args.held_out}, {args.num_frames}")
        if args.steps < 1 or args.checkpoint_every < 1:
            raise ValueError(f"need --steps and --checkpoint-every >= 1, got {args.steps}, {args.checkpoint_every}")
        configure_process(None)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        model_dir = out / "model"
        if not (model_dir / "config.json").is_file():
            cache = out / FRAMES_FILE
            if cache.is_file() and len(np.load(cache)["frames"]) == args.num_frames:
                data = np.load(cache)
                frames, inverse = data["frames"], data["inverse"]
            else:
                frames, inverse = render_frames(args.num_frames, args.seed, progress=not args.no_progress)
                np.savez(cache, frames=frames, inverse=inverse)
            split = len(frames) - max(1, int(len(frames) * args.held_out))
            init = None if args.init is None else load_depth_model(args.init)
            config = DepthConfig(width=args.width) if init is None else init.config
            net = train_depth(frames[:split], inverse[:split], args.steps, args.batch_size, args.lr, args.seed,
                              config, progress=not args.no_progress, checkpoint=out,
                              checkpoint_every=args.checkpoint_every, init=init)
            net.save(model_dir)
            figures = evaluate(net, frames[split:], inverse[split:])
            print(f"held-out frames ({len(frames) - split}): inverse-depth L1 {figures['inverse_depth_l1']:.4f}, "
                  f"within 25% of the true depth {100 * figures['within_25pct']:.1f}% of pixels")
        if args.attach:
            attached = attach_small_net(model_dir, args.attach, DEPTH_DIR, load_depth_model)
            print(f"attached {model_dir} to {attached}")
    except (ValueError, FileNotFoundError) as err:
        print(f"python -m minwm_train.depth: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
