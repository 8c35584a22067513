"""Where a world model's frames lose detail: pixels the start frame showed against the rest.

    python benchmarks/detail_split.py --models minwm-default --out outputs/detail_split.json

Issue 18's detail bar asks for the truth's detail (:func:`minwm_env.eval.quality.detail_ratio`,
1 = as detailed) at every horizon of the drift suite's paths. This splits that ratio by the
pixels the start frame showed (the truth's depth decides, as in the evaluation) and the pixels
it never showed, and scores beside each model the best that geometry alone can do: the start
frame warped once, through the *true* depth, into every horizon's camera (no chained warps, no
depth error). Where that warp keeps less than 0.8 of the truth's detail on seen pixels, the
truth shows detail the start frame never had (a surface walked up to shows finer texture than
it did from afar), and only a model that generates detail can meet the bar there.

Per horizon h (chunks), pooled over paths and layouts like the bar: the slope of the frame's
detail map on the truth's, over the pixels of each part (``all``, ``seen``, ``new``), and the
share of seen pixels. Same layouts, paths and seeds as ``benchmarks/default_bars.py``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval import quality
from minwm_env.eval.evaluator import EvalConfig, Evaluator
from minwm_env.eval.generation import frame_world_poses
from minwm_env.eval.rollout import ground_truth_like, paired_rollout
from minwm_env.warp import warp_image_depth

PARTS = ("all", "seen", "new")
TRUTH_WARP = "true-depth warp"


class _Moments:
    """Per-horizon sums of the detail maps' covariance and the truth's variance, per part."""

    def __init__(self):
        self.covariance = {part: [] for part in PARTS}
        self.variance = {part: [] for part in PARTS}

    def add(self, frames: np.ndarray, truth: np.ndarray, seen: np.ndarray) -> None:
        model_map, truth_map = quality.detail_map(frames), quality.detail_map(truth)
        truth_map = truth_map - truth_map.mean(axis=(1, 2), keepdims=True)
        for part, mask in (("all", np.ones_like(seen)), ("seen", seen), ("new", ~seen)):
            weight = mask.astype(np.float64)
            count = np.maximum(weight.sum((1, 2)), 1)
            self.covariance[part].append((model_map * truth_map * weight).sum((1, 2)) / count)
            self.variance[part].append((truth_map ** 2 * weight).sum((1, 2)) / count)

    def ratios(self) -> dict:
        out = {}
        for part in PARTS:
            covariance, variance = np.mean(self.covariance[part], 0), np.mean(self.variance[part], 0)
            ratio = np.sqrt(np.maximum(covariance / np.maximum(variance, 1e-12), 0))
            out[part] = [None if not math.isfinite(r) else round(float(r), 3) for r in ratio]
        return out


def _truth_warp(start: np.ndarray, start_depth: np.ndarray, poses: np.ndarray, intrinsics) -> np.ndarray:
    """The start frame (H, W, 3) uint8 warped once through its true depth into ``poses`` (K, 4, 4)."""
    image = torch.from_numpy(start).permute(2, 0, 1)[None].double()
    warped = warp_image_depth(image, torch.from_numpy(start_depth)[None], torch.from_numpy(poses[0])[None],
                              torch.from_numpy(poses[1:])[None], torch.as_tensor(intrinsics)[None].double())
    return warped[0].permute(1, 2, 3, 0).numpy().clip(0, 255).round().astype(np.uint8)


def measure(models: list[str], layouts: list[str], steps: int, paths: int, seed: int) -> dict:
    moments = {name: _Moments() for name in [*models, TRUTH_WARP]}
    seen_share = []
    for layout in layouts:
        scene, scene_seed = layout.split(":")
        for index, model in enumerate(models):
            env = WorldModelEnv(model=model, obs_mode="chunk", start_scene=scene)
            truth_env = ground_truth_like(env, scene, int(scene_seed))
            config = EvalConfig(drift_chunks=steps, drift_paths=paths, seed=seed, mirrored=False)
            evaluator = Evaluator(env, truth_env, config)
            layout_info, renderer = evaluator.layout, truth_env.unwrapped.renderer
            for i in range(paths):  # the drift suite's paths and noise (Evaluator.drift)
                path = evaluator._path(config.drift_kind, steps, 500 + i)
                model_run, truth_run = paired_rollout(env, truth_env, path, seed=config.seed + 500 + i, keep="last")
                poses = frame_world_poses(path, layout_info.frames_per_chunk // layout_info.chunk_frames)
                poses = poses[::layout_info.frames_per_chunk]  # each step's last frame
                depth = np.stack([renderer.render_depth(p) for p in poses])
                seen = quality.seen_mask(poses[0], depth[0], poses[1:], evaluator.intrinsics, depth[1:])
                truth = truth_run.last_frames()[1:]
                moments[model].add(model_run.last_frames()[1:], truth, seen)
                if index == 0:
                    warped = _truth_warp(truth_run.last_frames()[0], depth[0], poses, evaluator.intrinsics)
                    moments[TRUTH_WARP].add(warped, truth, seen)
                    seen_share.append(seen.mean((1, 2)))
            env.close()
            truth_env.close()
        print(f"{layout} done", flush=True)
    return {"steps": steps, "paths_per_layout": paths, "layouts": layouts,
            "seen_share": np.mean(seen_share, 0).round(3).tolist(),
            "detail_ratio": {name: m.ratios() for name, m in moments.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minwm-default"])
    parser.add_argument("--layouts", nargs="+", default=["room:100", "gallery:100", "courtyard:100", "pillars:100"])
    parser.add_argument("--steps", type=int, default=16, help="horizon in steps (chunks)")
    parser.add_argument("--paths", type=int, default=4, help="drift paths per layout")
    parser.add_argument("--seed", type=int, default=1, help="as default_bars.py")
    parser.add_argument("--out", default="outputs/detail_split.json")
    args = parser.parse_args()
    if args.steps < 1 or args.paths < 1:
        parser.error(f"--steps and --paths must be at least 1, got {args.steps} and {args.paths}")
    result = measure(args.models, args.layouts, args.steps, args.paths, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, parts in result["detail_ratio"].items():
        for part in PARTS:
            values = [v for v in parts[part] if v is not None]
            print(f"{name:24s} {part:4s} min {min(values):.2f} max {max(values):.2f}  "
                  + " ".join("  - " if v is None else f"{v:.2f}" for v in parts[part]))
    print("seen share per horizon: " + " ".join(f"{v:.2f}" for v in result["seen_share"]))


if __name__ == "__main__":
    main()
