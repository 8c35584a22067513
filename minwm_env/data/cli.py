"""minwm-data render --out DIR | ingest --src DIR --out DIR | encode --data DIR: build training data.

    minwm-data render --out data/world --num-clips 1000 --num-frames 81
    minwm-data ingest --src my_videos --out data/mine --num-frames 81 --height 480 --width 832 --crop
    minwm-data encode --data data/world --model tiny --clips-per-shard 64
    python -m minwm_env.data.cli render --help          # the same, without the console script

Each subcommand's flags come from one dataclass below (see ``minwm-data <command> --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass
from typing import Sequence

from ..cli import add_dataclass_arguments, arg
from ..threads import configure_process
from .ingest import IngestConfig
from .latents import EncodeConfig
from .render import RenderConfig


@dataclass
class RenderArgs(RenderConfig):
    """Render clips of the ground-truth MuJoCo world into a dataset folder."""

    out: str = arg("", "output dataset folder (required; a rerun with the same settings continues it)")
    progress: bool = arg(True, "show a progress bar")


@dataclass
class IngestArgs(IngestConfig):
    """Ingest a folder of your videos with per-frame camera poses into a dataset folder."""

    src: str = arg("", "folder of videos and pose files (required)")
    out: str = arg("", "output dataset folder (required; a rerun with the same settings continues it)")
    progress: bool = arg(True, "show a progress bar")


@dataclass
class EncodeArgs(EncodeConfig):
    """Pre-encode a dataset folder into VAE latent shards (resumable: rerun to continue)."""

    data: str = arg("", "dataset folder (required)")
    out: str = arg("", "latent folder; empty: DATA/latents")
    model: str = arg("tiny", "model preset or local model folder whose VAE encodes the clips")
    device: str = arg("cpu", "device for the VAE")
    dtype: str = arg("float32", "VAE dtype", choices=("float32", "bfloat16", "float16"))
    max_shards: int | None = arg(None, "stop after writing this many new shards (rerun to continue)")
    progress: bool = arg(True, "show a progress bar")


COMMANDS = {"render": RenderArgs, "ingest": IngestArgs, "encode": EncodeArgs}
REQUIRED = {"render": ("out",), "ingest": ("src", "out"), "encode": ("data",)}


def _build(cls: type, namespace: argparse.Namespace):
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(namespace, field.name)
        if typing.get_origin(hints[field.name]) is tuple and value is not None:
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def _config(base: type, args):
    return base(**{field.name: getattr(args, field.name) for field in dataclasses.fields(base)})


def run(command: str, args) -> None:
    if command == "render":
        from .render import render_dataset
        render_dataset(args.out, _config(RenderConfig, args), progress=args.progress)
    elif command == "ingest":
        from .ingest import ingest_folder
        ingest_folder(args.src, args.out, _config(IngestConfig, args), progress=args.progress)
    elif command == "encode":
        import torch

        from ..models import load_model
        from .latents import encode_dataset
        codec = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype)).codec
        encode_dataset(args.data, codec, _config(EncodeConfig, args), out=args.out or None,
                       max_shards=args.max_shards, progress=args.progress)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="minwm-data", description="Build minwm training data.")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default: the package's choice, see minwm_env/threads.py; MINWM_THREADS=N also sets it)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, cls in COMMANDS.items():
        commands[name] = subparsers.add_parser(name, help=cls.__doc__.strip().splitlines()[0],
                                               description=cls.__doc__.strip())
        add_dataclass_arguments(commands[name], cls)
    namespace = parser.parse_args(argv)
    configure_process(namespace.num_threads)
    command, sub = namespace.command, commands[namespace.command]
    for name in REQUIRED[command]:
        if not getattr(namespace, name):
            sub.error(f"--{name.replace('_', '-')} is required")
    try:
        args = _build(COMMANDS[command], namespace)
        run(command, args)
    except (ValueError, FileNotFoundError) as err:
        print(f"minwm-data {command}: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
