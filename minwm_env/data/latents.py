"""Pre-encode a clip dataset into VAE latents, in safetensors shards, once; stream them back.

    minwm-data encode --data data/world --model tiny --clips-per-shard 64

Layout, beside the clips (``<data>/latents/`` by default)::

    latents/index.json                  settings + the plan: which clips go in which shard, and
                                        the clips' action space (``action_spec``, null if none)
    latents/shard-00000.safetensors     "<id>/latents" (C, F, h, w), "<id>/poses" (T, 4, 4),
    latents/shard-00001.safetensors     "<id>/intrinsics" (T, 4), "<id>/actions" (F - 1, D) if any,
    ...                                 "<id>/prompt_embeds" (L, D) if a text encoder was given

Each shard's safetensors metadata lists its clips (``clips``, JSON) and their prompts
(``prompts``, JSON). The plan is fixed in ``index.json`` before the first shard is encoded, so
every clip belongs to exactly one shard. Shards are written to a temporary file and moved into
place, so a shard file that exists is complete: an interrupted run is resumed by running the
same command again, which skips existing shards. Clips added to the dataset later go to new
shards. A rerun with different settings (frames, size, codec weights, text encoder) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import safetensors
import safetensors.torch
import torch
from tqdm.auto import tqdm

from .. import camera
from ..cli import arg
from .dataset import ClipDataset
from .format import atomic_write_json, check_num_frames, dataset_action_spec, read_json, read_manifest

if TYPE_CHECKING:  # importing the codec pulls in diffusers, which `render` and `ingest` never need
    from ..codec import WanVAECodec

INDEX = "index.json"
LATENTS_FORMAT = "minwm-latents"
LATENTS_VERSION = 1

TextEncoder = Callable[[str], torch.Tensor]  # prompt → (L, D) embeddings


@dataclass
class EncodeConfig:
    """Pre-encode a clip dataset into latent shards."""

    num_frames: int | None = arg(None, "RGB frames per clip, 1 + 4k; None: each clip's full length")
    height: int | None = arg(None, "resize frames to this height first; None: as stored")
    width: int | None = arg(None, "resize frames to this width first; None: as stored")
    crop: bool = arg(False, "centre-crop to the output aspect ratio before resizing")
    clips_per_shard: int = arg(64, "clips per safetensors shard")

    def __post_init__(self):
        if self.num_frames is not None:
            check_num_frames(self.num_frames)
        if self.clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {self.clips_per_shard}")
        if (self.height is None) != (self.width is None):
            raise ValueError(f"give both height and width or neither, got {self.height} and {self.width}")


def codec_fingerprint(codec: WanVAECodec) -> dict:
    """What identifies a codec's latent space: its sizes and a hash of its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(codec.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(codec.module).__name__, "latent_channels": codec.latent_channels,
            "spatial_factor": codec.spatial_factor, "temporal_factor": codec.temporal_factor,
            "sha256": digest.hexdigest()}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _plan(index_path: Path, settings: dict, clip_ids: list[str], clips_per_shard: int) -> list[dict]:
    """The shard plan: the existing one (checked against ``settings``) plus new shards for new clips."""
    shards: list[dict] = []
    if index_path.is_file():
        index = read_json(index_path)
        if index.get("format") != LATENTS_FORMAT or index.get("version") != LATENTS_VERSION:
            raise ValueError(f"{index_path} is not a {LATENTS_FORMAT} v{LATENTS_VERSION} index")
        if index["settings"] != settings:
            changed = sorted(k for k in settings if index["settings"].get(k) != settings[k])
            raise ValueError(f"{index_path} was made with other settings (differs in {changed}); encode into "
                             f"another folder, or delete {index_path.parent} to start over")
        shards = index["shards"]
    planned = [clip for shard in shards for clip in shard["clips"]]
    missing = sorted(set(planned) - set(clip_ids))
    if missing:
        raise ValueError(f"{index_path} lists clips the dataset no longer has: {missing[:5]}")
    planned_set = set(planned)
    new = [clip for clip in clip_ids if clip not in planned_set]
    for start in range(0, len(new), clips_per_shard):
        shards.append({"file": shard_name(len(shards)), "clips": new[start:start + clips_per_shard]})
    return shards


def _shard_is_complete(path: Path, clips: list[str]) -> bool:
    if not path.is_file():
        return False
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            stored = json.loads(handle.metadata()["clips"])
    except (safetensors.SafetensorError, OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a readable latent shard ({err}); delete it and rerun to re-encode it") from err
    if stored != clips:
        raise ValueError(f"{path} holds clips {stored[:3]}..., but {path.parent / INDEX} plans {clips[:3]}...; "
                         f"delete it and rerun to re-encode it")
    return True


def encode_dataset(root: str | Path, codec: WanVAECodec, config: EncodeConfig, out: str | Path | None = None,
                   text_encoder: TextEncoder | None = None, text_encoder_name: str | None = None,
                   max_shards: int | None = None, progress: bool = True) -> Path:
    """Encode the clips of ``root`` into shards under ``out`` (default ``root/latents``); returns ``out``.

    ``text_encoder`` (optional) maps a prompt to (L, D) embeddings, stored per clip; name it with
    ``text_encoder_name`` so a resumed run can check it is the same one. ``max_shards`` stops
    after writing that many new shards (a run in instalments; rerun to continue).
    """
    root = Path(root)
    out = root / "latents" if out is None else Path(out)
    manifest = read_manifest(root)
    if text_encoder is not None and not text_encoder_name:
        raise ValueError("give text_encoder_name with text_encoder, so resumed runs can check it is the same")
    num_frames = config.num_frames
    if num_frames is not None and (num_frames - 1) % codec.temporal_factor:
        raise ValueError(f"num_frames must be 1 + {codec.temporal_factor}k for this codec, got {num_frames}")
    sizes = {(c.height, c.width) for c in manifest.clips} if config.height is None else {(config.height, config.width)}
    for height, width in sizes:
        codec.latent_size(height, width)  # raises unless divisible by the spatial factor
    settings = {"num_frames": num_frames, "height": config.height, "width": config.width, "crop": config.crop,
                "clips_per_shard": config.clips_per_shard, "codec": codec_fingerprint(codec),
                "text_encoder": text_encoder_name if text_encoder is not None else None}
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    shards = _plan(index_path, settings, [clip.id for clip in manifest.clips], config.clips_per_shard)
    spec = dataset_action_spec(root)  # kept with the latents, so training checks it against the model
    atomic_write_json(index_path, {"format": LATENTS_FORMAT, "version": LATENTS_VERSION, "dataset": str(root.resolve()),
                                   "settings": settings, "shards": shards,
                                   "action_spec": None if spec is None else spec.to_dict()})
    remaining = [shard for shard in shards if not _shard_is_complete(out / shard["file"], shard["clips"])]
    todo = remaining if max_shards is None else remaining[:max_shards]
    clips = ClipDataset(root, num_frames, config.height, config.width, config.crop, float_frames=True)
    position = {meta.id: i for i, meta in enumerate(clips.clips)}
    device = next(codec.module.parameters()).device
    done = sum(len(shard["clips"]) for shard in shards) - sum(len(shard["clips"]) for shard in remaining)
    with tqdm(total=done + sum(len(s["clips"]) for s in todo), initial=done, desc="encode", unit="clip",
              disable=not progress) as bar:
        for shard in todo:
            tensors: dict[str, torch.Tensor] = {}
            prompts: dict[str, str] = {}
            for clip_id in shard["clips"]:
                item = clips[position[clip_id]]
                frames = item["frames"].permute(3, 0, 1, 2)[None].to(device)  # (1, 3, T, H, W)
                tensors[f"{clip_id}/latents"] = codec.encode(frames)[0].cpu().contiguous()
                tensors[f"{clip_id}/poses"] = item["poses"].contiguous()
                tensors[f"{clip_id}/intrinsics"] = item["intrinsics"].contiguous()
                if "actions" in item:
                    tensors[f"{clip_id}/actions"] = item["actions"].contiguous()
                prompts[clip_id] = item["prompt"]
                if text_encoder is not None:
                    with torch.no_grad():
                        tensors[f"{clip_id}/prompt_embeds"] = text_encoder(item["prompt"]).detach().cpu().contiguous()
                bar.update(1)
            path = out / shard["file"]
            tmp = path.with_name(path.name + ".tmp")
            safetensors.torch.save_file(tensors, str(tmp), metadata={
                "format": LATENTS_FORMAT, "clips": json.dumps(shard["clips"]), "prompts": json.dumps(prompts)})
            os.replace(tmp, path)
    return out


class LatentShardDataset(torch.utils.data.IterableDataset):
    """Streams pre-encoded clips shard by shard: one shard is open at a time.

    With several DataLoader workers each takes every n-th shard. ``shuffle`` permutes the shard
    order and the clips within a shard, from ``seed`` and the epoch (:meth:`set_epoch`).

    Each item: ``id``, ``latents`` (C, F, h, w), ``poses`` (T, 4, 4) RGB-frame c2w relative to
    the first, ``latent_poses`` (F, 4, 4) (RGB frame 4k, relative to the first), ``intrinsics``
    (T, 4), ``prompt`` (str), and ``actions`` / ``prompt_embeds`` when stored.
    """

    def __init__(self, folder: str | Path, shuffle: bool = False, seed: int = 0):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        index = read_json(index_path)
        if index.get("format") != LATENTS_FORMAT or index.get("version") != LATENTS_VERSION:
            raise ValueError(f"{index_path} is not a {LATENTS_FORMAT} v{LATENTS_VERSION} index")
        self.settings, self.shards = index["settings"], index["shards"]
        self.index = index
        absent = [shard["file"] for shard in self.shards if not (self.folder / shard["file"]).is_file()]
        if absent:
            raise FileNotFoundError(f"{self.folder} is incomplete: {len(absent)} of {len(self.shards)} shards are "
                                    f"missing ({absent[:3]}...); rerun `minwm-data encode` to finish it")
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def __len__(self) -> int:
        return sum(len(shard["clips"]) for shard in self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.shards)))
        if self.shuffle:
            rng.shuffle(order)
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            order = order[worker.id::worker.num_workers]
        temporal_factor = self.settings["codec"]["temporal_factor"]
        for shard_index in order:
            path = self.folder / self.shards[shard_index]["file"]
            with safetensors.safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
                clips, prompts = json.loads(metadata["clips"]), json.loads(metadata["prompts"])
                if self.shuffle:
                    rng.shuffle(clips)
                keys = set(handle.keys())
                for clip_id in clips:
                    item = {"id": clip_id, "prompt": prompts[clip_id]}
                    for name in ("latents", "poses", "intrinsics", "actions", "prompt_embeds"):
                        if f"{clip_id}/{name}" in keys:
                            item[name] = handle.get_tensor(f"{clip_id}/{name}")
                    item["latent_poses"] = camera.latent_frame_poses(item["poses"], temporal_factor).float()
                    yield item
