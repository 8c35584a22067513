"""Stream a few chunks from a model and write them to an mp4 (or a .npy when imageio is missing).

    python examples/stream_tiny.py --model tiny --chunks 8 --out outputs/stream.mp4
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minwm_env.cli import arg, parse
from minwm_env.codec import to_uint8
from minwm_env.generator import StreamingGenerator
from minwm_env.models import load_model
from minwm_env.threads import configure_process


@dataclass
class Args:
    """Stream chunks from a world model into a video file."""

    model: str = arg("tiny", "preset name or model folder")
    chunks: int = arg(8, "number of chunks to generate")
    seed: int = arg(0, "noise seed")
    out: str = arg("outputs/stream.mp4", "output video (.mp4) or array (.npy)")


def main() -> None:
    args = parse(Args)
    configure_process()  # torch was imported before minwm_env: the package picks the threads here
    model = load_model(args.model)
    gen = StreamingGenerator(model)
    height, width = model.settings.height, model.settings.width
    frames = [gen.reset(seed=args.seed, image=torch.zeros(1, 3, height, width))]
    for _ in range(args.chunks):
        out = gen.next_chunk()
        frames.append(out.frames)
        print(f"chunk at positions {out.frame_positions}: {out.timings['time/chunk_s'] * 1000:.1f} ms")
    video = to_uint8(torch.cat(frames, dim=2))[0].numpy()  # (T, H, W, 3)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import imageio.v3 as iio
    except ImportError:
        path = path.with_suffix(".npy")
        np.save(path, video)
    else:
        iio.imwrite(path, video, fps=16)
    print(f"wrote {len(video)} frames to {path}")


if __name__ == "__main__":
    main()
