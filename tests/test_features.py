"""The evaluation encoder and its Fréchet distance (minwm_env/eval/features.py): the shipped weights
load the same every time and refuse damage; the FD is exact on Gaussians we can do by hand, 0 for
one set, small for two samples of the truth, and clearly larger for blurred, blocky or repeated
frames."""

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from minwm_env.eval.features import (CONFIG_FILE, ENCODER_VERSION, SHIPPED_ENCODER, WEIGHTS_FILE, TrainConfig,
                                     all_kinds, features, frame_distance, frechet_distance, load_encoder,
                                     render_views, train_encoder)
from minwm_env.integrity import read_manifest
from minwm_env.jsonfile import read_json

NUM_FRAMES = 256  # per set: 4 x the feature dimension (the FD's floor at this N is in the shipped config)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


@pytest.fixture(scope="module")
def truth():
    """Two samples of held-out truth: layouts 100-101 and 102-103 of every scene kind, other views."""
    first = render_views(all_kinds([100, 101]), NUM_FRAMES, seed=1).frames
    second = render_views(all_kinds([102, 103]), NUM_FRAMES, seed=2).frames
    return first, second


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(frame, (0, 0), sigma) for frame in frames])


def blocks(frames: np.ndarray, size: int = 4) -> np.ndarray:
    """Each size x size block replaced by its mean colour (a codec's block artefacts, at their worst)."""
    num, height, width, channels = frames.shape
    tiles = frames.reshape(num, height // size, size, width // size, size, channels).astype(np.float32)
    means = np.broadcast_to(tiles.mean(axis=(2, 4), keepdims=True), tiles.shape)
    return means.reshape(frames.shape).round().astype(np.uint8)


def test_shipped_encoder_is_versioned_and_loads_the_same_every_time(encoder, truth):
    again = load_encoder()
    assert encoder.version == again.version == ENCODER_VERSION
    state, state_again = encoder.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    frames = truth[0][:64]
    assert np.array_equal(features(frames, encoder), features(frames, again))
    # batching changes float32 rounding only (convolution kernels depend on the batch size)
    np.testing.assert_allclose(features(frames, encoder, batch_size=7), features(frames, encoder), rtol=0, atol=1e-5)
    record = read_json(SHIPPED_ENCODER / CONFIG_FILE)
    assert record["feature_dim"] == features(frames[:1], encoder).shape[1] == encoder.config.feature_dim
    assert record["held_out"]["pixel_accuracy"] > 0.8 and record["held_out"]["scene_kind_accuracy"] > 0.5
    assert set(read_manifest(SHIPPED_ENCODER)) == {WEIGHTS_FILE}


def test_damaged_or_unhashed_weights_are_refused(tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(SHIPPED_ENCODER, damaged)
    with open(damaged / WEIGHTS_FILE, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 64)
    with pytest.raises(ValueError, match="encoder.safetensors is damaged"):
        load_encoder(damaged)
    unhashed = tmp_path / "unhashed"
    shutil.copytree(SHIPPED_ENCODER, unhashed)
    (unhashed / "weights.sha256.json").unlink()
    with pytest.raises(ValueError, match="no sha256 manifest"):
        load_encoder(unhashed)


def test_features_refuse_frames_the_encoder_was_not_trained_on(encoder):
    with pytest.raises(ValueError, match="uint8 frames"):
        features(np.zeros((4, 64, 64, 3), dtype=np.float32), encoder)
    with pytest.raises(ValueError, match="uint8 frames"):
        features(np.zeros((4, 32, 32, 3), dtype=np.uint8), encoder)
    encoder.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            features(np.zeros((4, 64, 64, 3), dtype=np.uint8), encoder)
    finally:
        encoder.eval()


def with_diagonal_covariance(x: np.ndarray, stds) -> np.ndarray:
    """``x`` moved linearly so that its sample covariance is exactly diag(stds²)."""
    centred = x - x.mean(axis=0)
    whiten = np.linalg.cholesky(np.linalg.inv(np.cov(centred, rowvar=False)))  # cov(centred @ whiten) = I
    return centred @ whiten * np.asarray(stds) + x.mean(axis=0)


def test_frechet_distance_matches_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, size=(500, 1)), rng.normal(-0.5, 0.5, size=(300, 1))
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    by_hand = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(by_hand, rel=1e-10)
    # independent dimensions (sample covariances exactly diagonal): the sum of the 1-D distances
    a = with_diagonal_covariance(rng.normal(size=(400, 3)), [1.0, 2.0, 3.0])
    b = with_diagonal_covariance(rng.normal(size=(400, 3)), [3.0, 1.0, 0.5]) + [1.0, 0.0, 0.0]
    by_hand = sum((a[:, k].mean() - b[:, k].mean()) ** 2 + (a[:, k].std(ddof=1) - b[:, k].std(ddof=1)) ** 2
                  for k in range(3))
    assert frechet_distance(a, b) == pytest.approx(by_hand, rel=1e-9)
    # a rotation of both sets changes nothing, though the covariances no longer commute
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert frechet_distance(a @ rotation, b @ rotation) == pytest.approx(by_hand, rel=1e-9)
    # one covariance, two means: only the means count
    c = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 3))
    assert frechet_distance(c, c + [1.0, 2.0, 2.0]) == pytest.approx(9.0, rel=1e-9)
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_needs_more_samples_than_features_or_shrinkage():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(64, 64)), rng.normal(size=(200, 64))
    with pytest.raises(ValueError, match="at least 65 samples per set"):
        frechet_distance(a, b)
    assert np.isfinite(frechet_distance(a, b, shrinkage=0.1))
    with pytest.raises(ValueError, match="shrinkage"):
        frechet_distance(a, b, shrinkage=1.0)
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(a, b[:, :10])


def test_truth_sets_score_a_low_floor_and_degraded_truth_scores_higher(encoder, truth):
    first, second = truth
    second_features = features(second, encoder)
    assert frame_distance(first, first, encoder) == pytest.approx(0.0, abs=1e-9)
    floor = frechet_distance(features(first, encoder), second_features)
    blurred = frechet_distance(features(blur(first, 1.5), encoder), second_features)
    blocky = frechet_distance(features(blocks(first), encoder), second_features)
    repeated = frechet_distance(features(np.repeat(first[:1], NUM_FRAMES, axis=0), encoder), second_features)
    # measured with the shipped eval-encoder-v1 (N = 256): floor 1.94, blur 23.6, blocks 33.1, repeat 135.8
    assert floor < 4.0
    for name, score in (("blur", blurred), ("blocks", blocky), ("repeat", repeated)):
        assert score > 5 * floor, f"{name}: FD {score:.3f} vs the truth's floor {floor:.3f}"


def test_training_command_is_deterministic(tmp_path):
    """The command line's smoke run and the same settings in this process write the same bytes."""
    settings = dict(num_frames=16, num_layouts=1, steps=2, batch_size=8, num_eval_layouts=1, eval_frames_per_layout=1,
                    num_threads=1)
    flags = [text for key, value in settings.items() for text in ("--" + key.replace("_", "-"), str(value))]
    subprocess.run([sys.executable, "-m", "minwm_env.eval.features", "train", "--out", str(tmp_path / "cli"), *flags],
                   check=True, capture_output=True, timeout=120)
    record = train_encoder(TrainConfig(out=str(tmp_path / "here"), **settings), progress=False)
    assert (tmp_path / "cli" / WEIGHTS_FILE).read_bytes() == (tmp_path / "here" / WEIGHTS_FILE).read_bytes()
    assert read_json(tmp_path / "here" / CONFIG_FILE)["held_out"] == record["held_out"]
    assert load_encoder(tmp_path / "cli").config == load_encoder(SHIPPED_ENCODER).config
