"""What the spatial memory (minwm_env/memory.py) costs over a long episode: flat in time and bytes.

    python benchmarks/memory_cost.py            # 2-core CPU, one torch thread: under a minute

A camera walks 10,000 frames through a room (a figure of eight, turning as it goes) and a
:class:`~minwm_env.memory.ViewMemory` (one row, 32 frames of 64×64) stores frames along it,
either one per chunk of 16 frames (what streaming does: the chunk's last clean frame) or
every frame. Every 500 frames the next chunk's first 4 frames are the targets: the current
frame's warp into them (border fill, with validity: what the model's reference already costs)
is timed as the baseline, then ``retrieve`` and ``composite`` (which retrieves for the gaps
itself) for k = 4, each the median of a few repeats. Beside them: how many stored frames the
composite used (each adds one warp of the targets, so its time follows that number) and the
share of the targets' pixels left as gaps before and after. Synthetic frames (noise): the
cost does not depend on what the pixels show. Both time and bytes stay flat because the store
is preallocated and every call scans ``capacity`` slots, not the episode.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from minwm_env import profiling
from minwm_env.cli import arg, parse
from minwm_env.memory import ViewMemory
from minwm_env.warp import warp_image
from minwm_env.world.renderer import look_pose


@dataclass
class Args:
    """Cost of the spatial memory along a long walk."""

    frames: int = arg(10_000, "frames the camera walks")
    every: int = arg(500, "frames between measurements")
    chunk: int = arg(16, "frames per chunk (one add per chunk in the per-chunk mode)")
    targets: int = arg(4, "target frames whose reference is filled at each measurement")
    capacity: int = arg(32, "frames the memory keeps")
    size: int = arg(64, "frame height and width")
    k: int = arg(4, "stored frames retrieved per composite")
    depth: float = arg(2.0, "warp plane depth (the shipped models' warp_depth)")
    repeats: int = arg(7, "timed repeats per measurement (the median is shown)")
    threads: int = arg(1, "torch threads")
    seed: int = arg(0, "seed of the synthetic frames")


INTRINSICS = (0.8660254037844386, 0.8660254037844386, 0.5, 0.5)  # the renderer's 60° field of view


def walk(num_frames: int) -> torch.Tensor:
    """(num_frames, 4, 4) c2w of a figure-of-eight walk through a 6×6 room at eye height, about
    0.04 units and 3° a frame, so a long episode keeps meeting new poses and old places."""
    poses = []
    for i in range(num_frames):
        s = 2 * math.pi * i / 2000  # one figure of eight every 2000 frames
        poses.append(look_pose(2.4 * math.sin(s), 1.8 * math.sin(2 * s), 1.0, 3.0 * i + 40 * math.sin(7 * s)))
    return torch.from_numpy(np.stack(poses))



def run(args: Args, add_every: int) -> list[dict]:
    """One walk, adding a frame every ``add_every`` frames; a row of figures every ``args.every``."""
    torch.set_num_threads(args.threads)
    poses = walk(args.frames + args.targets)
    generator = torch.Generator().manual_seed(args.seed)
    memory = ViewMemory(1, args.capacity, args.size, args.size)
    intrinsics = torch.tensor(INTRINSICS, dtype=torch.float64)[None]
    rows, add_seconds, num_adds = [], 0.0, 0
    for frame in range(1, args.frames + 1):
        image = torch.rand(1, 3, args.size, args.size, generator=generator) * 2 - 1
        if frame % add_every == 0:
            start = time.perf_counter()
            memory.add(image, poses[frame - 1][None])
            add_seconds += time.perf_counter() - start
            num_adds += 1
        if frame % args.every:
            continue
        targets = poses[frame: frame + args.targets][None]  # (1, N, 4, 4) the next chunk's first frames
        source = poses[frame - 1][None]

        def last_warp():
            return warp_image(image, source, targets, intrinsics, args.depth, "border", with_validity=True)

        warped = last_warp()
        colours, validity = warped[:, :3], warped[:, 3:]
        filled = memory.composite(colours, validity, targets, intrinsics, args.depth, args.k, fill="border")
        gaps = validity[:, 0] < memory.valid_threshold
        used = memory.retrieve(targets, intrinsics, args.k, args.depth, gaps=gaps).indices >= 0
        rows.append({
            "frames": frame, "adds": num_adds, "stored": int(memory.num_frames[0]),
            "add_ms": 1000 * add_seconds / max(num_adds, 1),
            "warp_ms": profiling.median_ms(last_warp, args.repeats),
            "retrieve_ms": profiling.median_ms(lambda: memory.retrieve(targets, intrinsics, args.k, args.depth), args.repeats),
            "composite_ms": profiling.median_ms(lambda: memory.composite(colours, validity, targets, intrinsics, args.depth,
                                                               args.k, fill="border"), args.repeats),
            "used": int(used.sum()),
            "gaps_before": float((validity < memory.valid_threshold).float().mean()),
            "gaps_after": float((filled.validity < memory.valid_threshold).float().mean()),
            "bytes": memory.nbytes,
        })
        add_seconds, num_adds = 0.0, 0
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| frames | stored | adds since last row | add ms | last-frame warp ms | retrieve ms | "
             "composite ms (incl. its retrieve) | frames composited | gaps before → after | store bytes |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['frames']} | {row['stored']} | {row['adds']} | {row['add_ms']:.2f} "
                     f"| {row['warp_ms']:.2f} "
                     f"| {row['retrieve_ms']:.2f} | {row['composite_ms']:.2f} | {row['used']} "
                     f"| {100 * row['gaps_before']:.0f}% → {100 * row['gaps_after']:.0f}% | {row['bytes']:,} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse(Args, argv)
    for name, value in (("frames", args.frames), ("every", args.every), ("chunk", args.chunk),
                        ("targets", args.targets), ("capacity", args.capacity), ("size", args.size),
                        ("repeats", args.repeats), ("threads", args.threads)):
        if value < 1:
            raise SystemExit(f"--{name} must be at least 1, got {value}")
    torch.set_num_threads(args.threads)
    print(f"# {profiling.machine_description(torch.device('cpu'))}, {profiling.now_utc()}")
    print(f"# python benchmarks/memory_cost.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# capacity {args.capacity}, {args.size}x{args.size}, {args.targets} target frames, k = {args.k}, "
          f"depth {args.depth}")
    for title, add_every in ((f"one add per chunk of {args.chunk} frames", args.chunk), ("one add per frame", 1)):
        print(f"\n## {title}\n")
        print(table(run(args, add_every)))


if __name__ == "__main__":
    main()
