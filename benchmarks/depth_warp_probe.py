"""How much per-pixel depth buys the warped reference over one plane, on held-out layouts.

    python benchmarks/depth_warp_probe.py --out outputs/depth_warp_probe.json

The start frame of held-out paths (each scene kind at layout 100; walk, turn, look around,
zigzag, out and back) is reprojected into every later frame's camera, with no network, three ways:
through one plane 2 units ahead (`warp_image`, the reference the shipped model is given),
through the start frame's truth depth (`warp_image_depth`: what a perfect depth head would
give), and through a depth model's prediction of it (``--depth-model``). Each is scored per
latent-frame horizon on the pixels the start frame showed (the truth's depth decides, as in
the evaluation), and each depth warp's coverage of those pixels is reported (a seen pixel no
point of the splat lands on is a hole the stream's fill net must draw).

    python benchmarks/depth_warp_probe.py --kinds orbit --paths 3 --latent-frames 13 \
        --depth-model minwm_env/assets/minwm-default/depth

``--kinds orbit`` takes the novel-view suite's orbits instead (strafing around a near object
while turning to keep it centred), where depth errors on the object tear it apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from minwm_env.eval import quality
from minwm_env.eval.generation import novel_view_path
from minwm_env.warp import warp_image, warp_image_depth
from minwm_env.world.paths import random_path, rgb_frame_poses
from minwm_env.world.renderer import WorldRenderer
from minwm_env.world.scenes import make_scene

KINDS = ("walk", "turn", "look_around", "zigzag", "out_and_back")
ORBIT = "orbit"  # the novel-view suite's orbit: strafe while turning to keep a near object centred


def _psnr(mse: float) -> float:
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def _depth_tiles(frame: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> list[np.ndarray]:
    """The frame and two inverse-depth maps as grey images on one scale (white: near, black: sky)."""
    def grey(depth):
        inverse = np.clip(1.0 / depth, 0, 2.0) / 2.0
        return np.repeat((inverse * 255).astype(np.uint8)[..., None], 3, axis=-1)
    return [frame, grey(predicted), grey(truth)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["room:100", "gallery:100", "courtyard:100", "pillars:100"])
    parser.add_argument("--paths", type=int, default=2, help="seeds per path kind and layout")
    parser.add_argument("--latent-frames", type=int, default=17)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=[*KINDS, ORBIT],
                        help="path kinds (orbit: the novel-view suite's orbit around a near object)")
    parser.add_argument("--depth-model", default=None, help="a depth model folder (minwm_env.depth) to score too")
    parser.add_argument("--out", default="outputs/depth_warp_probe.json")
    parser.add_argument("--picture", default=None,
                        help="with --depth-model: a PNG of each layout's start frame, its predicted and true inverse depth")
    args = parser.parse_args()
    predictor = None
    if args.depth_model:
        from minwm_env.depth import load_depth_model
        predictor = load_depth_model(args.depth_model)
    names = ["plane", "truth_depth"] + (["model_depth"] if predictor else [])
    horizons = args.latent_frames - 1
    sq = {n: np.zeros(horizons) for n in names}
    count = np.zeros(horizons)
    covered = np.zeros(horizons)
    covered_model = np.zeros(horizons)
    tiles = []
    for layout in args.layouts:
        name, seed = layout.split(":")
        scene = make_scene(name, int(seed))
        renderer = WorldRenderer(scene)
        k = torch.tensor(renderer.intrinsics)[None]
        for kind in args.kinds:
            for p in range(args.paths):
                if kind == ORBIT:
                    path = novel_view_path(scene, ORBIT, args.latent_frames - 1, seed=1000 + p)
                else:
                    path = random_path(scene, args.latent_frames, kind=kind, seed=1000 + p)
                poses = path.start_c2w @ rgb_frame_poses(path.relative_c2w()).numpy()  # (1 + 4·H, 4, 4)
                last = poses[4::4]  # each latent frame's last RGB frame
                truth = np.stack([renderer.render(c) for c in last]).astype(np.float64)
                depth = np.stack([renderer.render_depth(c) for c in poses[[0, *range(4, len(poses), 4)]]])
                start = renderer.render(poses[0])
                seen = quality.seen_mask(poses[0], depth[0], last, renderer.intrinsics, depth[1:])
                image = torch.from_numpy(start).permute(2, 0, 1)[None].double()
                src, tgt = torch.from_numpy(poses[0])[None], torch.from_numpy(last)[None]
                warps = {"plane": warp_image(image, src, tgt, k, 2.0)}
                truth_warp = warp_image_depth(image, torch.from_numpy(depth[:1]), src, tgt, k, with_validity=True)
                warps["truth_depth"] = truth_warp[:, :3]
                if predictor:
                    predicted = predictor.predict(start[None])
                    model_warp = warp_image_depth(image, predicted, src, tgt, k, with_validity=True)
                    warps["model_depth"] = model_warp[:, :3]
                    covered_model += ((model_warp[0, 3].numpy() > 0.5) & seen).sum((1, 2))
                    if args.picture and kind == args.kinds[0] and p == 0:
                        tiles.append(_depth_tiles(start, predicted[0].numpy(), depth[0]))
                valid = truth_warp[0, 3].numpy() > 0.5
                for n, w in warps.items():
                    frames = w[0].permute(1, 2, 3, 0).numpy()
                    err = ((frames - truth) ** 2).mean(-1)
                    sq[n] += (err * seen).sum((1, 2))
                covered += (valid & seen).sum((1, 2))
                count += seen.sum((1, 2))
        print(f"{layout} done", flush=True)
    if tiles:
        import imageio.v3 as iio
        sheet = np.concatenate([np.concatenate(t, axis=1) for t in tiles], axis=0)
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(args.picture, np.repeat(np.repeat(sheet, 2, 0), 2, 1))
        print(f"wrote {args.picture}: per layout, the frame, predicted and true inverse depth")
    result = {n: [_psnr(sq[n][h] / count[h]) for h in range(horizons)] for n in names}
    result.update({n + "_pooled": _psnr(sq[n].sum() / count.sum()) for n in names})
    result["truth_depth_coverage_of_seen"] = (covered / count).round(3).tolist()
    if predictor:
        result["model_depth_coverage_of_seen"] = (covered_model / count).round(3).tolist()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for n in names:
        print(f"{n:12s} pooled {result[n + '_pooled']:.2f} dB  per horizon " + " ".join(f"{x:.1f}" for x in result[n]))
    print("coverage of seen by the truth-depth splat:", result["truth_depth_coverage_of_seen"])
    if predictor:
        print("coverage of seen by the model-depth splat:", result["model_depth_coverage_of_seen"])


if __name__ == "__main__":
    main()
