"""Rendered frames/s of the ground-truth world (MuJoCo, headless EGL on the CPU).

    python benchmarks/render.py --sizes 64 128 --frames 500

Each size renders ``--frames`` frames along a random camera path in each scene, after a short
warm-up, and reports frames/s; sizes are interleaved per scene so machine noise hits all alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from minwm_env.cli import arg, parse
from minwm_env.profiling import now_utc
from minwm_env.world.paths import random_path
from minwm_env.world.renderer import WorldRenderer
from minwm_env.world.scenes import SCENE_NAMES, make_scene


@dataclass
class Args:
    """Ground-truth rendering throughput."""

    sizes: tuple[int, ...] = arg((64, 128), "square frame sizes to time")
    frames: int = arg(500, "frames rendered per size and scene")
    json: str | None = arg(None, "write the figures to this JSON file")


def main(argv=None) -> None:
    args = parse(Args, argv)
    totals = {size: [0, 0.0] for size in args.sizes}
    for name in SCENE_NAMES:
        scene = make_scene(name, 0)
        poses = random_path(scene, args.frames, "mixed", seed=0).world_c2w()
        renderers = {size: WorldRenderer(scene, size, size) for size in args.sizes}
        for size, renderer in renderers.items():
            renderer.render_many(poses[:20])  # warm-up
        for size, renderer in renderers.items():
            start = time.perf_counter()
            renderer.render_many(poses)
            totals[size][0] += len(poses)
            totals[size][1] += time.perf_counter() - start
    result = {"date": now_utc(), "frames_per_s": {str(s): n / t for s, (n, t) in totals.items()}}
    for size, (n, t) in totals.items():
        print(f"{size}x{size}: {n / t:8.1f} frames/s  ({n} frames over {len(SCENE_NAMES)} scenes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
