"""Parameters and first-chunk FLOPs of the full-size architectures, on meta tensors (no weights,
no GPU): the bidirectional sampler (50 Euler steps with CFG over the whole clip) against the
autoregressive few-step first chunk, for Wan2.1-1.3B and HunyuanVideo-1.5 8.3B.

    python benchmarks/flops.py                  # both presets, a table and --json
"""

from __future__ import annotations

import argparse
import json

from minwm_env.models import PRESETS
from minwm_env.profiling import count_flops, now_utc

# (preset, latent frames of the bidirectional clip, steps of the few-step student): Wan2.1
# clips are 81 RGB frames (21 latent), HunyuanVideo-1.5's 121 (31); both students take 4 steps.
CASES = (("wan21-1.3b", 21, 4), ("hy15-8b", 31, 4))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=[c[0] for c in CASES], choices=[c[0] for c in CASES])
    parser.add_argument("--bidir-steps", type=int, default=50)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = {}
    for preset, latent_frames, fewstep in CASES:
        if preset not in args.presets:
            continue
        settings = PRESETS[preset].settings
        flops = count_flops(preset, num_latent_frames=latent_frames, chunk_frames=settings.chunk_frames,
                            bidir_steps=args.bidir_steps, ar_steps=args.bidir_steps, fewstep_steps=fewstep)
        results[preset] = {"height": settings.height, "width": settings.width, "clip_latent_frames": latent_frames,
                           "chunk_frames": settings.chunk_frames, "fewstep_steps": fewstep, **flops}
        print(f"{preset:12s} {settings.height}x{settings.width}: {flops['parameters'] / 1e9:.2f}B parameters, "
              f"first chunk bidirectional {args.bidir_steps}-step CFG / AR {fewstep}-step: "
              f"{flops['ratio_bidir_over_ar_fewstep']:.1f}x (video tokens), {flops['ratio_with_text']:.1f}x "
              f"(with the text path per forward vs once)")
    out = {"date": now_utc(), "bidir_steps": args.bidir_steps, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
