"""Camera maths and minWM pose strings."""

import math

import pytest
import torch

from minwm_env import camera
from minwm_env.pose_strings import KEY_DELTAS, format_pose_string, parse_pose_string

EYE = torch.eye(4, dtype=torch.float64)


def random_deltas(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3,
                      (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 120], dim=1)


def test_delta_and_its_inverse_compose_to_identity():
    steps = camera.delta_to_matrix(random_deltas(20))
    torch.testing.assert_close(steps @ camera.invert_pose(steps), EYE.expand(20, 4, 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(camera.invert_pose(steps) @ steps, EYE.expand(20, 4, 4), atol=1e-12, rtol=0)


def test_matrix_to_delta_inverts_delta_to_matrix():
    deltas = random_deltas(50, seed=1)
    torch.testing.assert_close(camera.matrix_to_delta(camera.delta_to_matrix(deltas)), deltas, atol=1e-9, rtol=0)


def test_poses_to_deltas_inverts_compose():
    deltas = random_deltas(12, seed=2)
    poses = camera.compose_deltas(deltas)
    assert poses.shape == (13, 4, 4) and torch.equal(poses[0], EYE)
    torch.testing.assert_close(camera.poses_to_deltas(poses), deltas, atol=1e-9, rtol=0)


def test_four_quarter_turns_return_to_start():
    for axis, move in ((3, 2), (4, 2), (5, 0)):
        delta = torch.zeros(4, 6, dtype=torch.float64)
        delta[:, axis] = 90
        delta[:, move] = 1.0  # also move across the rotation axis each time: a square walk
        poses = camera.compose_deltas(delta)
        torch.testing.assert_close(poses[-1], EYE, atol=1e-12, rtol=0)


def test_known_motions_give_expected_matrices():
    # Forward 1 unit: camera centre moves along +z of the world (first camera = world).
    forward = camera.compose_deltas(torch.tensor([[0, 0, 1.0, 0, 0, 0]]))[-1]
    torch.testing.assert_close(forward[:3, 3], torch.tensor([0, 0, 1.0], dtype=torch.float64))
    # Yaw right 90°: the camera's forward axis (column 2) now points along world +x.
    right = camera.compose_deltas(torch.tensor([[0, 0, 0, 90.0, 0, 0]]))[-1]
    torch.testing.assert_close(right[:3, 2], torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0)
    # Pitch up 90°: forward points along world -y (up, since y is down).
    up = camera.compose_deltas(torch.tensor([[0, 0, 0, 0, 90.0, 0]]))[-1]
    torch.testing.assert_close(up[:3, 2], torch.tensor([0, -1.0, 0], dtype=torch.float64), atol=1e-12, rtol=0)
    # Turn right then move forward: translation is along the rotated axis.
    both = camera.compose_deltas(torch.tensor([[0, 0, 2.0, 90.0, 0, 0]]))[-1]
    torch.testing.assert_close(both[:3, 3], torch.tensor([2.0, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_relative_to_first_makes_first_identity_and_keeps_relative_motion():
    start = camera.delta_to_matrix(random_deltas(1, seed=5))[0]
    poses = camera.compose_deltas(random_deltas(6, seed=6), start_c2w=start)
    rel = camera.relative_to_first(poses)
    torch.testing.assert_close(rel[0], EYE, atol=1e-12, rtol=0)
    torch.testing.assert_close(camera.poses_to_deltas(rel), camera.poses_to_deltas(poses), atol=1e-9, rtol=0)


def test_quaternion_vectors_round_trip():
    w2c = camera.invert_pose(camera.compose_deltas(random_deltas(30, seed=7)))
    vectors = camera.w2c_to_vector(w2c)
    assert vectors.shape == (31, 7)
    torch.testing.assert_close(camera.w2c_from_vector(vectors), w2c, atol=1e-12, rtol=0)
    # The identity pose is [0, 0, 0, 0, 0, 0, 1] (scalar-last).
    torch.testing.assert_close(vectors[0], torch.tensor([0, 0, 0, 0, 0, 0, 1.0], dtype=torch.float64))


def test_rgb_frame_poses_to_latent_frame_poses():
    rgb = camera.compose_deltas(random_deltas(16, seed=8), start_c2w=camera.delta_to_matrix(random_deltas(1, 9))[0])
    latent = camera.latent_frame_poses(rgb)
    assert latent.shape == (5, 4, 4)
    torch.testing.assert_close(latent[0], EYE, atol=1e-12, rtol=0)
    torch.testing.assert_close(latent[2], camera.invert_pose(rgb[0]) @ rgb[8], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        camera.latent_frame_poses(rgb[:16])


def test_plucker_rays_of_identity_camera():
    k = camera.intrinsics_from_fov(90.0, 4, 4)  # fx = fy = 0.5 (normalised), centred
    rays = camera.plucker_rays(EYE, k, 4, 4)
    assert rays.shape == (6, 4, 4)
    # Centre-ish pixel (2, 2) at normalised (0.625, 0.625): direction ∝ (0.25, 0.25, 1).
    expected = torch.tensor([0.25, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(rays[:3, 2, 2], expected / expected.norm())
    assert torch.all(rays[3:] == 0)  # camera at the origin: zero moment
    moved = camera.plucker_rays(camera.compose_deltas(torch.tensor([[1.0, 0, 0, 0, 0, 0]]))[-1], k, 4, 4)
    torch.testing.assert_close(moved[:3], rays[:3])
    assert moved[3:].abs().max() > 0.1


def test_pose_string_parses_to_the_expected_deltas():
    deltas = parse_pose_string(" w*2, l*1 ,a*3")
    assert deltas.shape == (6, 6)
    torch.testing.assert_close(deltas[0], torch.tensor([0, 0, 0.08, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(deltas[2], torch.tensor([0, 0, 0, 3.0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(deltas[5], torch.tensor([-0.08, 0, 0, 0, 0, 0], dtype=torch.float64))
    # Known string → known matrix: 30 turns of 3° right = facing +x; then 'w' moves along +x.
    end = camera.compose_deltas(parse_pose_string("l*30,w*10"))[-1]
    torch.testing.assert_close(end[:3, 3], torch.tensor([0.8, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0)
    # minWM's 'u' is up: -y in OpenCV.
    assert parse_pose_string("u*1")[0, 1] == -0.08


@pytest.mark.parametrize("text", ["w*8,a*4,s*7", "l*120", "dn*2,u*2,i*3,k*3,j*1,stay*5,d*1"])
def test_pose_string_round_trips(text):
    assert format_pose_string(parse_pose_string(text)) == text


def test_all_keys_parse_and_a_full_turn_closes():
    for key in KEY_DELTAS:
        assert parse_pose_string(f"{key}*1").shape == (1, 6)
    torch.testing.assert_close(camera.compose_deltas(parse_pose_string("l*120"))[-1], EYE, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad,match", [("w8", "cannot parse"), ("w*", "cannot parse"), ("w*2,", "segment 1"),
                                       ("W*2", "cannot parse"), ("w * 2", "cannot parse"), ("x*3", "unknown key"),
                                       ("w*-1", "cannot parse")])
def test_malformed_pose_strings_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_pose_string(bad)


def test_format_rejects_non_key_deltas_naming_the_frame():
    deltas = parse_pose_string("w*2")
    deltas[1, 3] = 1.0
    with pytest.raises(ValueError, match="latent frame 1"):
        format_pose_string(deltas)


def test_nan_and_wrong_dimension_raise():
    with pytest.raises(ValueError, match="NaN"):
        camera.delta_to_matrix(torch.tensor([0, 0, math.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="6 values"):
        camera.delta_to_matrix(torch.zeros(5))
    with pytest.raises(ValueError, match="7 values"):
        camera.w2c_from_vector(torch.zeros(6))
