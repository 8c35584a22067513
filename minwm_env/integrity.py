"""Weights that cannot lie: content hashes beside every weight file we write, finite tensors only.

``python -m minwm_env.integrity FOLDER ...`` checks a model folder we did not write ourselves (or
one written before manifests existed: the shipped model's were made this way), then writes its
manifests.

Every folder in which minwm writes weight files (a model's ``transformer/``, ``vae/`` and
``conditioning/``, a training checkpoint) also gets ``weights.sha256.json``, mapping each weight
file's name to the sha256 of its bytes. Whatever reads weights checks them against it first, so a
damaged file (a run of bad bytes, a truncated copy, a sparse-file hole of zeros: damage that can
be finite and look like weights) stops the load with an error naming the file, instead of
streaming black frames or training on NaN. Configs are not hashed: they are meant to be read and
edited, and a config that does not fit its weights already fails the shape checks.

A folder without a manifest was not written by minwm (a diffusers-format Wan downloaded from the
hub has none) or predates manifests: it loads, with the content checks alone. Those run on every
load, manifest or not: every floating tensor must be finite, and nothing non-finite is ever saved
(:func:`check_finite`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import torch

MANIFEST_FILE = "weights.sha256.json"
WEIGHTS_FILE = "model.safetensors"
"""the weights file of a small net's folder (:func:`save_small_net`)"""
WEIGHT_SUFFIXES = (".safetensors", ".pt")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files directly inside ``folder`` (safetensors and torch.save files), sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def write_manifest(folder: str | Path, files: Iterable[str | Path] | None = None) -> Path:
    """Hash ``files`` (default: every weight file in ``folder``) into ``folder``'s manifest.

    Written to a temporary file and renamed into place: a manifest that exists is complete.
    """
    folder = Path(folder)
    paths = weight_files(folder) if files is None else [folder / Path(f).name for f in files]
    if not paths:
        raise ValueError(f"{folder} holds no weight files to hash")
    manifest = {"sha256": {p.name: sha256(p) for p in paths}}
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST_FILE)
    return folder / MANIFEST_FILE


def read_manifest(folder: str | Path) -> dict[str, str] | None:
    """File name → sha256 hex digest, or None when ``folder`` has no manifest."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        hashes = json.loads(path.read_text())["sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged: it is not a manifest of sha256 hashes ({err!r})") from err
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise ValueError(f"{path} is damaged: 'sha256' must map file names to hex digests")
    return hashes


def check_files(folder: str | Path, files: Iterable[str | Path]) -> bool:
    """Check the weight ``files`` about to be read from ``folder`` against its manifest.

    Returns False when the folder has no manifest (nothing to check against: see the module
    docstring). Raises ValueError naming the file when one is not listed in the manifest or its
    bytes do not hash to the recorded digest.
    """
    folder = Path(folder)
    hashes = read_manifest(folder)
    if hashes is None:
        return False
    for file in files:
        path = folder / Path(file).name
        if path.name not in hashes:
            raise ValueError(f"{path} is not listed in {folder / MANIFEST_FILE}: it was not written with this "
                             f"folder's other weights, so it cannot be trusted")
        actual = sha256(path)
        if actual != hashes[path.name]:
            raise ValueError(f"{path} is damaged: its sha256 is {actual}, but {MANIFEST_FILE} recorded "
                             f"{hashes[path.name]} when it was written")
    return True


def non_finite(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Name → count of NaN/inf values, for every floating (or complex) tensor that has any."""
    counts = {}
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                counts[name] = count
    return counts


def describe_non_finite(tensors: Mapping[str, torch.Tensor], counts: dict[str, int]) -> str:
    """``counts`` (from :func:`non_finite`) as "name (3 of 512 values)", the first few tensors."""
    shown = [f"{name} ({count} of {tensors[name].numel()} values)" for name, count in list(counts.items())[:3]]
    more = f" and {len(counts) - 3} more tensors" if len(counts) > 3 else ""
    return ", ".join(shown) + more


def check_finite(tensors: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise ValueError naming ``source`` and the tensors if any floating tensor holds NaN or inf."""
    counts = non_finite(tensors)
    if counts:
        raise ValueError(f"{source} holds NaN or inf in {describe_non_finite(tensors, counts)}: it is damaged "
                         f"or was saved from a diverged run, and is not loaded")


def save_small_net(net: torch.nn.Module, config, folder: str | Path) -> None:
    """A small pixel-space net (the depth net, the fill net) into ``folder``: float32 safetensors,
    its dataclass ``config`` as config.json, and the sha256 manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.detach().float().contiguous() for k, v in net.state_dict().items()},
                                folder / WEIGHTS_FILE)
    (folder / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    write_manifest(folder, [WEIGHTS_FILE])


def load_small_net(folder: str | Path, config_class, net_class, kind: str) -> torch.nn.Module:
    """The net :func:`save_small_net` saved in ``folder`` (``kind`` names it in errors), its
    weights checked against the manifest and the config's shapes; in eval mode."""
    folder = Path(folder)
    config_path, weights = folder / "config.json", folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{folder} is not a {kind} model folder (needs config.json and {WEIGHTS_FILE})")
    try:
        config = config_class(**json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{config_path} is not a valid {kind} config ({err})") from err
    check_files(folder, [weights])
    net = net_class(config)
    state = safetensors.torch.load_file(weights)
    expected = net.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"the weights in {weights} do not match {config_path}")
    check_finite(state, weights)
    net.load_state_dict(state)
    return net.eval()



def attach_small_net(net_folder: str | Path, model_folder: str | Path, subdir: str, load) -> Path:
    """Copy a small net's folder into a world model folder's ``subdir`` (``depth/``, ``fill/``)
    after loading it with ``load`` (a damaged net is refused before anything is replaced)."""
    import shutil

    target = Path(model_folder)
    if not (target / "minwm.json").is_file():
        raise FileNotFoundError(f"--attach {target}: not a world model folder (no minwm.json)")
    load(net_folder)
    shutil.rmtree(target / subdir, ignore_errors=True)
    shutil.copytree(net_folder, target / subdir)
    return target / subdir

def bless_model_folder(folder: str | Path) -> list[Path]:
    """Write the manifests of a model folder that has none, after loading it with every content
    check (each tensor finite, the weights fitting their configs). Returns the manifests written.

    Only for weights whose history is known (the shipped model, a folder written before
    manifests existed): a manifest records the bytes as they are, it cannot tell they are right.
    """
    from .models import load_model  # (models imports this module)

    folder = Path(folder)
    load_model(folder)
    written = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if weight_files(sub):
            written.append(write_manifest(sub))
    if not written:
        raise ValueError(f"{folder} holds no weight files in its subfolders: is it a model folder?")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minwm_env.integrity", description=bless_model_folder.__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="model folders (transformer/, vae/ or codec.json, ...)")
    for folder in parser.parse_args(argv).folders:
        for manifest in bless_model_folder(folder):
            print(manifest)


if __name__ == "__main__":
    main()
