"""The dataset pipeline: rendered and ingested clips read back with their poses, loud errors on bad
input, resumable latent encoding equal to an uninterrupted run, and the minwm-data command line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import safetensors
import torch

from minwm_env import camera
from minwm_env.data import (ClipDataset, EncodeConfig, IngestConfig, LatentShardDataset, RenderConfig, encode_dataset,
                            ingest_folder, read_manifest, render_dataset)
from minwm_env.data.cli import main
from minwm_env.data.format import iter_video, resize_frames
from minwm_env.data.render import plan_clip, render_clip
from minwm_env.models import build_preset
from minwm_env.pose_strings import parse_pose_string
from minwm_env.world.paths import random_path, rgb_frame_poses
from minwm_env.world.renderer import WorldRenderer
from minwm_env.world.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
# H.264 at quality 9 (CRF 5), yuv444p: measured mean |error| per clip 0.63-1.07 uint8 levels over
# 12 rendered clips at 32x32 and 64x64 (yuv420p: 1.7-4.3, from halved colour resolution).
CODEC_MAE_BOUND = 2.0
WORLD = RenderConfig(num_clips=3, num_frames=17, height=32, width=32, seed=3,
                     path_kinds=("walk", "look_around", "zigzag", "mixed"))  # clips that move


def mean_abs_error(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return render_dataset(tmp_path_factory.mktemp("world") / "data", WORLD, progress=False)


@pytest.fixture(scope="module")
def codec():
    return build_preset("tiny", seed=0).codec


# ---------------------------------------------------------------------------------------------
# Rendered clips


def test_rendered_clips_read_back_with_their_poses_actions_and_frames(world):
    data = ClipDataset(world)
    assert [clip.id for clip in read_manifest(world).clips] == ["000000", "000001", "000002"]
    for item in data:
        plan = plan_clip(WORLD, int(item["id"]))
        scene = make_scene(plan.scene, plan.scene_seed)
        path = random_path(scene, 5, plan.path_kind, plan.path_seed)
        truth = WorldRenderer(scene, 32, 32).render_many(path.start_c2w @ rgb_frame_poses(path.relative_c2w()).numpy())
        assert item["frames"].shape == (17, 32, 32, 3) and item["frames"].dtype == torch.uint8
        assert mean_abs_error(item["frames"], truth) < CODEC_MAE_BOUND
        torch.testing.assert_close(item["poses"], rgb_frame_poses(path.relative_c2w()).float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(item["actions"], path.deltas.float())
        # The actions compose to the latent-frame poses, and the stored pose string spells them.
        torch.testing.assert_close(camera.compose_deltas(item["actions"].double()),
                                   camera.latent_frame_poses(item["poses"].double()), atol=1e-5, rtol=0)
        stored = json.loads((world / "clips" / f"{item['id']}.json").read_text())
        torch.testing.assert_close(parse_pose_string(stored["pose_string"]), path.deltas)
        expected_k = camera.intrinsics_from_fov(60.0, 32, 32).float().expand(17, 4)
        torch.testing.assert_close(item["intrinsics"], expected_k)
        assert item["prompt"] == "" and item["fps"] == 16.0


def test_render_is_deterministic_extends_and_refuses_other_settings(world, tmp_path):
    smaller = tmp_path / "a"
    render_dataset(smaller, RenderConfig(**{**vars(WORLD), "num_clips": 2}), progress=False)
    first_video = (smaller / "clips" / "000000.mp4").stat()
    render_dataset(smaller, WORLD, progress=False)  # continues: clip 2 is added, clips 0 and 1 kept
    again = (smaller / "clips" / "000000.mp4").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first_video.st_ino, first_video.st_mtime_ns)
    assert read_manifest(smaller).clips == read_manifest(world).clips
    for clip_id in ("000000", "000001", "000002"):
        assert (smaller / "clips" / f"{clip_id}.json").read_text() == (world / "clips" / f"{clip_id}.json").read_text()
        assert np.array_equal(np.stack(list(iter_video(smaller / "clips" / f"{clip_id}.mp4"))),
                              np.stack(list(iter_video(world / "clips" / f"{clip_id}.mp4"))))
    with pytest.raises(ValueError, match="other settings"):
        render_dataset(smaller, RenderConfig(**{**vars(WORLD), "height": 64}), progress=False)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        RenderConfig(num_frames=16)


def test_reader_windows_resizes_and_crops(world):
    full = ClipDataset(world)[1]
    torch.manual_seed(0)
    starts = set()
    windows = ClipDataset(world, num_frames=9, random_window=True)
    for _ in range(12):
        item = windows[1]
        start = next(s for s in (0, 4, 8) if torch.equal(item["frames"], full["frames"][s:s + 9]))
        starts.add(start)
        torch.testing.assert_close(item["poses"].double(), camera.relative_to_first(full["poses"][start:start + 9].double()),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(item["actions"], full["actions"][start // 4:start // 4 + 2])
    assert starts == {0, 4, 8}

    small = ClipDataset(world, num_frames=5, height=16, width=16, float_frames=True)[1]
    assert small["frames"].shape == (5, 16, 16, 3) and small["frames"].dtype == torch.float32
    expected = resize_frames(full["frames"][:5], 16, 16).float() / 127.5 - 1
    torch.testing.assert_close(small["frames"], expected)
    torch.testing.assert_close(small["intrinsics"], full["intrinsics"][:5])  # a plain resize keeps them

    # A 16x32 centre crop of a 32x32 clip keeps rows 8..23: a point at pixel row v is now at v - 8.
    cropped = ClipDataset(world, num_frames=5, height=16, width=32, crop=True)[1]
    assert cropped["frames"].shape == (5, 16, 32, 3)
    torch.testing.assert_close(cropped["frames"], full["frames"][:5, 8:24])
    fx, fy, cx, cy = full["intrinsics"][0].tolist()
    torch.testing.assert_close(cropped["intrinsics"][0], torch.tensor([fx, fy * 2, cx, (cy * 32 - 8) / 16]))
    with pytest.raises(ValueError, match="fewer than num_frames=21"):
        ClipDataset(world, num_frames=21)


def test_reader_names_a_missing_video(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world, copy)
    (copy / "clips" / "000001.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="000001.mp4"):
        ClipDataset(copy)[1]


# ---------------------------------------------------------------------------------------------
# Ingesting your own videos


@pytest.fixture(scope="module")
def source_clip():
    """19 rendered frames of a walk and their world-frame c2w (the first pose is not the identity)."""
    scene = make_scene("room", 3)
    path = random_path(scene, 6, "walk", seed=1)
    world_c2w = (path.start_c2w @ rgb_frame_poses(path.relative_c2w()).numpy())[:19]  # (19, 4, 4): not 1 + 4k
    frames = WorldRenderer(scene, 32, 32).render_many(world_c2w)
    return frames, world_c2w, WorldRenderer(scene, 32, 32).intrinsics


def write_source_video(path: Path, frames: np.ndarray) -> None:
    # Near-lossless (CRF 0, full colour), so what ingestion adds can be measured on its own.
    iio.imwrite(path, frames, plugin="FFMPEG", fps=30, codec="libx264", quality=10, pixelformat="yuv444p",
                macro_block_size=1, ffmpeg_log_level="error")


def realestate_text(world_c2w: np.ndarray, intrinsics: np.ndarray, decimals: int | None = None) -> str:
    lines = ["https://www.youtube.com/watch?v=minwm-test"]
    for index, c2w in enumerate(world_c2w):
        w2c = np.linalg.inv(c2w)
        values = [33366 * index, *intrinsics, 0, 0, *w2c[:3].reshape(-1)]
        lines.append(" ".join(repr(float(v)) if decimals is None else f"{v:.{decimals}f}" for v in values))
    return "\n".join(lines) + "\n"


def write_pose_file(folder: Path, stem: str, kind: str, world_c2w: np.ndarray, intrinsics: np.ndarray,
                    prompt: str | None = None) -> Path:
    w2c = np.linalg.inv(world_c2w)
    if kind in ("txt", "txt-6-decimals"):  # RealEstate10K's own files have about 6 decimals
        path = folder / f"{stem}.txt"
        path.write_text(realestate_text(world_c2w, intrinsics, 6 if kind == "txt-6-decimals" else None))
    elif kind == "json":
        path = folder / f"{stem}.json"
        data = {"c2w": world_c2w.tolist(), "intrinsics": list(map(float, intrinsics))}
        if prompt is not None:
            data["prompt"] = prompt
        path.write_text(json.dumps(data))
    elif kind == "npz-poses":
        path = folder / f"{stem}.npz"
        vectors = camera.w2c_to_vector(torch.from_numpy(w2c)).numpy()  # minWM's [tx, ty, tz, qx, qy, qz, qw]
        np.savez(path, poses=vectors, intrinsics=np.tile(intrinsics, (len(w2c), 1)))
    elif kind == "npz-w2c":
        path = folder / f"{stem}.npz"
        np.savez(path, w2c=w2c[:, :3], intrinsics=intrinsics)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["txt", "txt-6-decimals", "json", "npz-poses", "npz-w2c"])
def test_ingested_clips_read_back_with_their_poses(source_clip, tmp_path, kind):
    frames, world_c2w, intrinsics = source_clip
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", frames)
    write_pose_file(src, "walk", kind, world_c2w, intrinsics, prompt="a walk through a room" if kind == "json" else None)
    out = ingest_folder(src, tmp_path / "out", IngestConfig(), progress=False)

    item = ClipDataset(out)[0]
    assert item["id"] == "walk" and item["frames"].shape == (17, 32, 32, 3)  # 19 frames cut to 1 + 4k
    expected = camera.relative_to_first(torch.from_numpy(world_c2w[:17]))
    atol = 1e-5 if kind == "txt-6-decimals" else 1e-6
    torch.testing.assert_close(item["poses"].double(), expected, atol=atol, rtol=0)
    torch.testing.assert_close(item["intrinsics"].double(), torch.from_numpy(intrinsics).expand(17, 4), atol=atol, rtol=0)
    source = np.stack(list(iter_video(src / "walk.mp4")))[:17]
    assert mean_abs_error(item["frames"], source) < CODEC_MAE_BOUND
    assert item["fps"] == 30.0
    assert item["prompt"] == ("a walk through a room" if kind == "json" else "")


def test_ingest_strides_crops_and_resizes(source_clip, tmp_path):
    frames, world_c2w, intrinsics = source_clip
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", frames)
    write_pose_file(src, "walk", "txt", world_c2w, intrinsics)
    config = IngestConfig(frame_stride=2, height=8, width=16, crop=True)
    item = ClipDataset(ingest_folder(src, tmp_path / "out", config, progress=False))[0]
    # 19 frames at stride 2 → 10 → cut to 9; a 32x32 frame cropped to rows 8..23, then halved.
    assert item["frames"].shape == (9, 8, 16, 3) and item["fps"] == 15.0
    expected = camera.relative_to_first(torch.from_numpy(world_c2w[0:17:2]))
    torch.testing.assert_close(item["poses"].double(), expected, atol=1e-6, rtol=0)
    fx, fy, cx, cy = intrinsics
    torch.testing.assert_close(item["intrinsics"][0].double(), torch.tensor([fx, fy * 2, cx, (cy * 32 - 8) / 16],
                                                                            dtype=torch.float64), atol=1e-6, rtol=0)
    source = np.stack(list(iter_video(src / "walk.mp4")))[0:17:2, 8:24]
    assert mean_abs_error(item["frames"], resize_frames(source, 8, 16)) < CODEC_MAE_BOUND


def _corrupt_line(text: str, line: int, replacement: str) -> str:
    lines = text.splitlines()
    lines[line - 1] = replacement
    return "\n".join(lines) + "\n"


BAD_POSE_FILES = {
    # name: (file name, content maker, error class, message pattern)
    "short line": ("walk.txt", lambda c2w, k: _corrupt_line(realestate_text(c2w, k), 3, "0 0.5 0.5 0.5 0.5 0 0 1 0 0"),
                   ValueError, r"walk\.txt line 3: expected 19 numbers"),
    "nan": ("walk.txt", lambda c2w, k: realestate_text(c2w, k).replace(repr(float(k[0])), "nan", 1),
            ValueError, r"walk\.txt line 2: NaN"),
    "no url": ("walk.txt", lambda c2w, k: "\n".join(realestate_text(c2w, k).splitlines()[1:]),
               ValueError, r"walk\.txt: the first line must be the video's URL"),
    "not json": ("walk.json", lambda c2w, k: '{"c2w": [', ValueError, r"walk\.json is not valid JSON"),
    "two pose keys": ("walk.json", lambda c2w, k: json.dumps({"c2w": c2w.tolist(), "w2c": c2w.tolist(),
                                                               "intrinsics": list(k)}),
                      ValueError, r"walk\.json: needs exactly one of"),
    "unknown key": ("walk.json", lambda c2w, k: json.dumps({"c2w": c2w.tolist(), "intrinsics": list(k), "fov": 60}),
                    ValueError, r"walk\.json: unknown keys \['fov'\]"),
    "not rigid": ("walk.json", lambda c2w, k: json.dumps({"c2w": (c2w * np.array([2, 2, 2, 1.0])).tolist(),
                                                          "intrinsics": list(k)}),
                  ValueError, r"walk\.json: pose 0 is not a rigid transform"),
    "pixel intrinsics": ("walk.json", lambda c2w, k: json.dumps({"c2w": c2w.tolist(), "intrinsics": [500, 500, 16, 16]}),
                         ValueError, r"walk\.json: intrinsics look like pixels"),
    "missing poses": ("walk.txt", lambda c2w, k: realestate_text(c2w[:18], k),
                      ValueError, r"walk\.mp4 has 19 frames but .*walk\.txt has 18 poses"),
    "extra poses": ("walk.json", lambda c2w, k: json.dumps({"c2w": np.concatenate([c2w, c2w[-1:]]).tolist(),
                                                            "intrinsics": list(k)}),
                    ValueError, r"walk\.mp4 has 19 frames but .*walk\.json has 20 poses"),
}


@pytest.mark.parametrize("case", list(BAD_POSE_FILES))
def test_ingest_rejects_bad_pose_files_naming_them(source_clip, tmp_path, case):
    frames, world_c2w, intrinsics = source_clip
    name, make, error, pattern = BAD_POSE_FILES[case]
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", frames)
    (src / name).write_text(make(world_c2w, intrinsics))
    with pytest.raises(error, match=pattern):
        ingest_folder(src, tmp_path / "out", IngestConfig(), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists() or not read_manifest(tmp_path / "out").clips


def test_ingest_rejects_unpaired_files_and_short_videos(source_clip, tmp_path):
    frames, world_c2w, intrinsics = source_clip
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", frames)
    with pytest.raises(FileNotFoundError, match=r"walk\.mp4 has no pose file"):
        ingest_folder(src, tmp_path / "out", IngestConfig(), progress=False)
    write_pose_file(src, "walk", "txt", world_c2w, intrinsics)
    write_pose_file(src, "walk", "json", world_c2w, intrinsics)
    with pytest.raises(ValueError, match=r"walk\.mp4 has several pose files"):
        ingest_folder(src, tmp_path / "out", IngestConfig(), progress=False)
    (src / "walk.json").unlink()
    write_pose_file(src, "other", "json", world_c2w, intrinsics)
    with pytest.raises(ValueError, match=r"without a video.*other\.json"):
        ingest_folder(src, tmp_path / "out", IngestConfig(), progress=False)
    (src / "other.json").unlink()
    with pytest.raises(ValueError, match=r"walk\.mp4 is too short: 19 frames .* need 21"):
        ingest_folder(src, tmp_path / "out", IngestConfig(num_frames=21), progress=False)
    write_source_video(src / "tiny.mp4", frames[:3])
    write_pose_file(src, "tiny", "txt", world_c2w[:3], intrinsics)
    with pytest.raises(ValueError, match=r"tiny\.mp4 is too short"):
        ingest_folder(src, tmp_path / "out2", IngestConfig(), progress=False)


# ---------------------------------------------------------------------------------------------
# Latent shards


def shard_clips(folder: Path) -> list[list[str]]:
    clips = []
    for path in sorted(folder.glob("shard-*.safetensors")):
        with safetensors.safe_open(str(path), framework="pt") as handle:
            clips.append(json.loads(handle.metadata()["clips"]))
    return clips


def test_encoding_resumes_without_duplicates_and_matches_an_uninterrupted_run(world, codec, tmp_path):
    config = EncodeConfig(clips_per_shard=1)
    interrupted = tmp_path / "interrupted"
    encode_dataset(world, codec, config, out=interrupted, max_shards=1, progress=False)
    assert shard_clips(interrupted) == [["000000"]]
    with pytest.raises(FileNotFoundError, match="incomplete: 2 of 3 shards are missing"):
        LatentShardDataset(interrupted)
    (interrupted / "shard-00001.safetensors.tmp").write_bytes(b"half a shard from a killed run")
    first_shard = (interrupted / "shard-00000.safetensors").stat()
    encode_dataset(world, codec, config, out=interrupted, progress=False)
    again = (interrupted / "shard-00000.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first_shard.st_ino, first_shard.st_mtime_ns)  # skipped, not rewritten
    assert shard_clips(interrupted) == [["000000"], ["000001"], ["000002"]]
    assert not list(interrupted.glob("*.tmp"))

    straight = tmp_path / "straight"
    encode_dataset(world, codec, config, out=straight, progress=False)
    resumed = {item["id"]: item for item in LatentShardDataset(interrupted)}
    reference = {item["id"]: item for item in LatentShardDataset(straight)}
    assert sorted(resumed) == sorted(reference) == ["000000", "000001", "000002"]
    clips = ClipDataset(world, float_frames=True)
    for index, clip_id in enumerate(sorted(reference)):
        assert torch.equal(resumed[clip_id]["latents"], reference[clip_id]["latents"])
        assert resumed[clip_id]["latents"].shape == (4, 5, 4, 4)
        # The stored latents are the codec's encoding of the clip, with its poses and actions beside them.
        item = clips[index]
        if index == 2:  # the clip encoded after the resume
            direct = codec.encode(item["frames"].permute(3, 0, 1, 2)[None])[0]
            torch.testing.assert_close(resumed[clip_id]["latents"], direct, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(resumed[clip_id]["poses"], item["poses"])
        torch.testing.assert_close(resumed[clip_id]["actions"], item["actions"])
        torch.testing.assert_close(resumed[clip_id]["latent_poses"],
                                   camera.latent_frame_poses(item["poses"].double()).float())

    with pytest.raises(ValueError, match=r"other settings \(differs in \['num_frames'\]\)"):
        encode_dataset(world, codec, EncodeConfig(clips_per_shard=1, num_frames=9), out=interrupted, progress=False)
    with pytest.raises(ValueError, match=r"differs in \['codec'\]"):
        encode_dataset(world, build_preset("tiny", seed=1).codec, config, out=interrupted, progress=False)


def test_new_clips_go_to_new_shards_and_workers_split_shards(world, codec, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world, data)
    encode_dataset(data, codec, EncodeConfig(clips_per_shard=2), progress=False)
    old = (data / "latents" / "shard-00000.safetensors").stat()
    render_dataset(data, RenderConfig(**{**vars(WORLD), "num_clips": 4}), progress=False)
    encode_dataset(data, codec, EncodeConfig(clips_per_shard=2), progress=False)
    assert shard_clips(data / "latents") == [["000000", "000001"], ["000002"], ["000003"]]
    new = (data / "latents" / "shard-00000.safetensors").stat()
    assert (new.st_ino, new.st_mtime_ns) == (old.st_ino, old.st_mtime_ns)
    stream = LatentShardDataset(data / "latents", shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert sorted(item["id"] for item in loader) == ["000000", "000001", "000002", "000003"]


def test_encoding_stores_prompt_embeddings_from_a_text_encoder(source_clip, codec, tmp_path):
    frames, world_c2w, intrinsics = source_clip
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", frames)
    write_pose_file(src, "walk", "json", world_c2w, intrinsics, prompt="a walk")
    data = ingest_folder(src, tmp_path / "data", IngestConfig(num_frames=9, height=16, width=16), progress=False)

    def text_encoder(prompt: str) -> torch.Tensor:  # characters → a deterministic (L, 3) embedding
        codes = torch.tensor([float(ord(c)) for c in prompt])
        return torch.stack([codes, codes.sin(), codes.cos()], dim=-1)

    encode_dataset(data, codec, EncodeConfig(), text_encoder=text_encoder, text_encoder_name="chars",
                   progress=False)
    (item,) = list(LatentShardDataset(data / "latents"))
    assert item["prompt"] == "a walk" and item["latents"].shape == (4, 3, 2, 2)
    torch.testing.assert_close(item["prompt_embeds"], text_encoder("a walk"))


# ---------------------------------------------------------------------------------------------
# Command line: one smoke test per subcommand


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minwm_env.data.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_cli_render(tmp_path):
    proc = run_cli("render", "--out", str(tmp_path / "d"), "--num-clips", "1", "--num-frames", "5", "--height", "32",
                   "--width", "32", "--scenes", "pillars", "--path-kinds", "turn", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    item = ClipDataset(tmp_path / "d")[0]
    assert item["frames"].shape == (5, 32, 32, 3) and item["actions"].shape == (1, 6)
    assert item["actions"][0, 3].abs() == 3.0  # a turn: one 3° yaw step per latent frame


def test_cli_reports_missing_flags_and_bad_input(source_clip, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "--num-clips", "1"])
    assert exit_info.value.code == 2 and "--out is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "--out", str(tmp_path / "d"), "--scenes", "moon"])
    assert exit_info.value.code == 2 and "'moon'" in capsys.readouterr().err
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", source_clip[0])
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--src", str(src), "--out", str(tmp_path / "e"), "--no-progress"])
    assert exit_info.value.code == 1 and "walk.mp4 has no pose file" in capsys.readouterr().err


def test_cli_ingest(source_clip, tmp_path):
    frames, world_c2w, intrinsics = source_clip
    src = tmp_path / "src"
    src.mkdir()
    write_source_video(src / "walk.mp4", frames)
    write_pose_file(src, "walk", "txt", world_c2w, intrinsics)
    proc = run_cli("ingest", "--src", str(src), "--out", str(tmp_path / "d"), "--num-frames", "9", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    item = ClipDataset(tmp_path / "d")[0]
    assert item["frames"].shape == (9, 32, 32, 3)
    torch.testing.assert_close(item["poses"].double(), camera.relative_to_first(torch.from_numpy(world_c2w[:9])),
                               atol=1e-6, rtol=0)


def test_cli_encode(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world, data)
    proc = run_cli("encode", "--data", str(data), "--model", "tiny", "--clips-per-shard", "2", "--num-frames", "9",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert shard_clips(data / "latents") == [["000000", "000001"], ["000002"]]
    items = list(LatentShardDataset(data / "latents"))
    assert [item["id"] for item in items] == ["000000", "000001", "000002"]
    assert items[0]["latents"].shape == (4, 3, 4, 4)
