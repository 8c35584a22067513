"""What a fill net costs a streamed chunk, and what drawing once a chunk saves.

    MINWM_THREADS=1 python benchmarks/fill_cost.py --model runs/fill_model_folder

One env streams a steady turn (6° a latent frame, so every RGB frame of a chunk has a new strip)
and times, per chunk, the residual reference built three ways from the same inputs: the
border-fill warp alone (no fill net), the fill net drawn once on the chunk's last frame and
reprojected into the others (``warp_fill="net"``, :func:`~minwm_env.warp.fill_views`), and the
fill net run on every RGB frame of the chunk after the warp (what a per-frame fill would cost;
its frames are given a never-seen strip each, so none skips the net). Medians of
``--repeats`` runs, as milliseconds and as ratios to the warp alone, measured in one process.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch

from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.models import load_model
from minwm_env.profiling import median_ms
from minwm_env.threads import configure_process



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder with a fill net (fill/)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--env-steps", type=int, default=0,
                        help="also time N env steps of the turn (memory on, after 2 warm-up steps), with the fill "
                             "net and with the border fill instead, two rounds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    configure_process(None)
    model = load_model(args.model, warp_fill="net")
    env = WorldModelEnv(model=model, memory=False)
    env.reset(seed=0)
    turn = np.array([0, 0, 0, 6.0, 0, 0], np.float32)
    for _ in range(2):
        env.step(turn)
    stream = env.unwrapped._world.generator.stream  # the chunk stream after two steps: its reference and pose
    c2w = stream.plan(torch.from_numpy(np.repeat(turn[None, None], stream.chunk_frames, 1))).c2w
    previous = torch.cat([stream.c2w[:, None], c2w[:, :-1]], dim=1)
    k = torch.tensor(model.settings.intrinsics, dtype=torch.float64).expand(*c2w.shape[:2], 4)
    border = replace(model, settings=replace(model.settings, warp_fill="border"))

    def reference(m):
        with torch.no_grad():
            return m.residual_reference(stream.reference, stream.c2w[:, None], previous, c2w, k,
                                        reference_depth=stream.reference_depth)

    colours = model.codec.unpack(reference(border)[:, :192])  # (1, 3, 16, H, W)
    strips = torch.ones_like(colours[:, :1])
    for frame in range(strips.shape[2]):  # every frame a new strip at the right, growing
        strips[:, :, frame, :, -(2 + frame):] = 0

    def every_frame():
        with torch.no_grad():
            reference(border)
            return model.fill.fill(colours, strips)

    results = {"warp only": median_ms(lambda: reference(border), args.repeats),
               "fill once a chunk": median_ms(lambda: reference(model), args.repeats),
               "fill every frame": median_ms(every_frame, args.repeats)}
    base = results["warp only"]
    for name, ms in results.items():
        print(f"{name:>18}: {ms:7.1f} ms a chunk  ({ms / base:.2f}x the warp alone)")
    if args.env_steps:
        for name, m in (("border fill", border), ("fill net", model)):
            for _ in range(2):
                env = WorldModelEnv(model=m)
                env.reset(seed=0)
                for _ in range(2):
                    env.step(turn)
                ms = median_ms(lambda: env.step(turn), args.env_steps)
                frames = stream.chunk_frames * model.codec.temporal_factor
                print(f"env step, {name:>11}: {ms:6.1f} ms ({1000 * frames / ms:.0f} decoded frames/s)")
                results.setdefault(f"env step ms, {name}", []).append(ms)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), **results}, f, indent=2)


if __name__ == "__main__":
    main()
