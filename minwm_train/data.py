"""Training data: pre-encoded latent clips (``minwm-data encode``) held in memory, sampled by index.

Sampling by index from a per-step generator makes the data order a pure function of
(seed, step): a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minwm_env import camera
from minwm_env.conditioning import ActionSpec
from minwm_env.data.format import MANIFEST, dataset_action_spec
from minwm_env.data.latents import LatentShardDataset


class LatentClips:
    """Every clip of a latents folder, stacked: latents (N, C, F, h, w), w2c (N, F, 4, 4) relative
    to each clip's first frame, intrinsics (N, F, 4), actions (N, F, d) where action k moves the
    world from latent frame k-1 to k (frame 0's is zero) in :attr:`action_spec` (None: no named
    space), and prompt embeddings when stored."""

    def __init__(self, folder: str | Path, num_latent_frames: int | None = None):
        folder = Path(folder)
        if not (folder / "index.json").is_file() and (folder / "latents" / "index.json").is_file():
            folder = folder / "latents"
        if not (folder / "index.json").is_file():
            raise FileNotFoundError(f"{folder} holds no pre-encoded latents (no index.json); run `minwm-data encode`")
        shards = LatentShardDataset(folder)
        self.action_spec = _action_spec(shards.index, folder)
        items = list(shards)
        if not items:
            raise ValueError(f"{folder} holds no clips")
        frames = min(item["latents"].shape[1] for item in items)
        if num_latent_frames is not None:
            if num_latent_frames > frames:
                raise ValueError(f"num_latent_frames={num_latent_frames} but the clips in {folder} have {frames}")
            frames = num_latent_frames
        self.folder = folder
        # float16 in memory (half the RAM of float32; latents are converted back per batch)
        self.latents = torch.stack([item["latents"][:, :frames].half() for item in items])
        self.w2c = torch.stack([camera.invert_pose(item["latent_poses"][:frames].double()).float() for item in items])
        factor = (items[0]["poses"].shape[0] - 1) // max(1, items[0]["latents"].shape[1] - 1)
        self.intrinsics = torch.stack([item["intrinsics"][::factor][:frames].float() for item in items])
        self.actions = None
        if all("actions" in item for item in items):
            dims = {item["actions"].shape[-1] for item in items}
            if self.action_spec is not None and dims != {self.action_spec.dim}:
                raise ValueError(f"{folder}: the clips' actions have {sorted(dims)} components, but their action "
                                 f"space {self.action_spec.describe()} has {self.action_spec.dim}")
            self.actions = torch.stack([torch.cat([torch.zeros(1, item["actions"].shape[-1]),
                                                   item["actions"][:frames - 1].float()]) for item in items])
        self.prompt_embeds = None
        if all("prompt_embeds" in item for item in items):
            length = max(item["prompt_embeds"].shape[0] for item in items)
            self.prompt_embeds = torch.stack([torch.nn.functional.pad(item["prompt_embeds"].float(),
                                                                      (0, 0, 0, length - item["prompt_embeds"].shape[0]))
                                              for item in items])
        self.ids = [item["id"] for item in items]

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def source(self) -> str:
        return f"the data in {self.folder}"

    @property
    def num_latent_frames(self) -> int:
        return self.latents.shape[2]

    def batch(self, indices: torch.Tensor) -> dict:
        out = {"latents": self.latents[indices].float(), "w2c": self.w2c[indices], "intrinsics": self.intrinsics[indices]}
        if self.actions is not None:
            out["actions"] = self.actions[indices]
        if self.prompt_embeds is not None:
            out["prompt_embeds"] = self.prompt_embeds[indices]
        return out

    def sample(self, batch_size: int, generator: torch.Generator) -> dict:
        return self.batch(torch.randint(len(self), (batch_size,), generator=generator))


def _action_spec(index: dict, folder: Path) -> ActionSpec | None:
    """The clips' action space: stored in the latents' index (``minwm-data encode``), else read
    from the dataset the latents were made from (latents encoded before the index kept it)."""
    if "action_spec" in index:
        return None if index["action_spec"] is None else ActionSpec.from_dict(index["action_spec"])
    for root in (Path(index.get("dataset", "")), folder.parent):
        if (root / MANIFEST).is_file():
            return dataset_action_spec(root)
    return None
