"""minwm-rollout: roll a world model out along a camera path and write a video and a JSON log.

    minwm-rollout --model tiny --pose-string "w*16,l*16,a*8" --out outputs/rollout
    minwm-rollout --model tiny --actions path.npy --out outputs/rollout      # (N, 6) per latent frame
    minwm-rollout --model tiny --random-steps 20 --out outputs/rollout

Writes ``rollout.mp4`` (the world model's frames; beside them the ground truth rendered along
the same camera path when the start view came from the ground-truth world), ``steps.png``
(the start and the last frame of every step in a row; the ground truth's row below) and
``rollout.json`` (actions, poses, per-step timings and, with the ground truth, PSNR per step).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .cli import arg, parse
from .pose_strings import format_pose_string, parse_pose_string
from .threads import configure_process


@dataclass
class Args:
    """Roll a world model out along a camera path; write an mp4 and a JSON log."""

    model: str = arg("minwm-default", "shipped model, preset name or model folder")
    pose_string: str | None = arg(None, "minWM pose string, e.g. 'w*16,l*8' (one key step per latent frame)")
    actions: str | None = arg(None, "a .npy or .json file of per-latent-frame camera deltas (N, 6)")
    random_steps: int = arg(0, "instead: this many steps of random camera actions")
    seed: int = arg(0, "seed of the start view and the noise")
    image: str | None = arg(None, "a start image file (PNG/JPEG) instead of a rendered start view")
    start_scene: str = arg("room", "ground-truth scene that renders the start view")
    ground_truth: bool = arg(True, "render the ground truth beside the model's frames when possible")
    device: str = arg("cpu", "torch device")
    dtype: str = arg("float32", "compute dtype", choices=["float32", "bfloat16", "float16"])
    fps: int = arg(16, "frames per second of the video")
    num_threads: int | None = arg(None, "torch threads (default: the package's choice, see minwm_env/threads.py; MINWM_THREADS=N also sets it)")
    out: str = arg("outputs/rollout", "output folder")


def load_actions(args: Args, chunk_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 6) per-latent-frame camera deltas, N a multiple of ``chunk_frames`` (padded with 'stay')."""
    given = [args.pose_string is not None, args.actions is not None, args.random_steps > 0]
    if sum(given) != 1:
        raise SystemExit("give exactly one of --pose-string, --actions, --random-steps")
    if args.pose_string is not None:
        deltas = parse_pose_string(args.pose_string).numpy()
    elif args.actions is not None:
        path = Path(args.actions)
        if not path.is_file():
            raise SystemExit(f"--actions file {path} does not exist")
        deltas = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()), dtype=np.float64)
        if deltas.ndim != 2 or deltas.shape[1] != 6:
            raise SystemExit(f"{path}: actions must be (N, 6) camera deltas, got shape {deltas.shape}")
    else:
        keys = [(0, 0, 0.08, 0, 0, 0), (0, 0, 0, 3, 0, 0), (0, 0, 0, -3, 0, 0), (0.08, 0, 0, 0, 0, 0),
                (-0.08, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0)]
        choice = rng.integers(len(keys), size=args.random_steps)
        deltas = np.repeat(np.asarray(keys, dtype=np.float64)[choice], chunk_frames, axis=0)
    pad = (-len(deltas)) % chunk_frames
    return np.concatenate([deltas, np.zeros((pad, 6))]).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def contact_sheet(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of frames (each (N, H, W, 3), the same N) → one image, frames side by side with white
    gaps between frames and between rows."""
    num, height, width, _ = rows[0].shape
    sheet = np.full((len(rows) * (height + gap) - gap, num * (width + gap) - gap, 3), 255, np.uint8)
    for r, frames in enumerate(rows):
        for i, frame in enumerate(frames):
            sheet[r * (height + gap):r * (height + gap) + height, i * (width + gap):i * (width + gap) + width] = frame
    return sheet


def main(argv=None) -> None:
    args = parse(Args, argv)
    configure_process(args.num_threads)
    import imageio.v3 as iio

    from .envs.ground_truth import GroundTruthEnv
    from .envs.world_model import WorldModelEnv

    env = WorldModelEnv(model=args.model, device=args.device, dtype=args.dtype, obs_mode="chunk",
                        start_scene=args.start_scene, num_threads=args.num_threads)
    world = env.unwrapped._world
    deltas = load_actions(args, world.chunk_frames, np.random.default_rng(args.seed))
    options = {}
    if args.image is not None:
        options["image"] = np.asarray(iio.imread(args.image))[..., :3]
    _, info = env.reset(seed=args.seed, options=options)
    model_frames = [info["frames"]]
    truth = None
    if args.ground_truth and info["start_world_pose"] is not None:
        truth = GroundTruthEnv(scene=args.start_scene, width=world.width, height=world.height, obs_mode="chunk")
        _, truth_info = truth.reset(options={"start_pose": info["start_world_pose"]})
        truth_frames = [truth_info["frames"]]
    log = {"model": args.model, "seed": args.seed, "actions": deltas.tolist(), "steps": []}
    try:
        log["pose_string"] = format_pose_string(torch.as_tensor(deltas, dtype=torch.float64))
    except ValueError:
        log["pose_string"] = None  # not made of key steps
    chunks = deltas.reshape(-1, world.chunk_frames, 6)
    for chunk in tqdm(chunks, desc="rollout", unit="chunk", file=sys.stderr, disable=None):
        _, _, _, _, info = env.step(chunk)
        model_frames.append(info["frames"])
        step = {"frame_index": info["frame_index"], "pose": info["pose"].tolist(),
                "latent_poses": None if info["latent_poses"] is None else info["latent_poses"].tolist(),
                "latency_s": float(info["latency_s"]), "timings": {k: float(v) for k, v in info["timings"].items()}}
        if truth is not None:
            _, _, _, _, truth_info = truth.step(chunk)
            truth_frames.append(truth_info["frames"])
            step["psnr_last_frame"] = psnr(info["frames"][-1], truth_info["frames"][-1])
            step["collided"] = bool(truth_info["collided"])
        log["steps"].append(step)
    video = np.concatenate(model_frames)
    if truth is not None:
        video = np.concatenate([video, np.concatenate(truth_frames)], axis=2)  # model | truth
        log["layout"] = "left: world model, right: ground truth"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out / "rollout.mp4", video, fps=args.fps, codec="libx264", macro_block_size=1)
    rows = [np.stack([frames[-1] for frames in model_frames])]
    if truth is not None:
        rows.append(np.stack([frames[-1] for frames in truth_frames]))
    iio.imwrite(out / "steps.png", contact_sheet(rows))
    log["num_frames"] = int(len(video))
    log["mean_latency_s"] = float(np.mean([s["latency_s"] for s in log["steps"]])) if log["steps"] else None
    (out / "rollout.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {len(video)} frames to {out / 'rollout.mp4'}, the last frame of every step to "
          f"{out / 'steps.png'} and the log to {out / 'rollout.json'}")
    env.close()
    if truth is not None:
        truth.close()


if __name__ == "__main__":
    main()
