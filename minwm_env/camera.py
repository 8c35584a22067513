"""Camera maths, in one place (docs/design.md §5). All conventions are stated here once.

* Camera frame: OpenCV — x right, y down, z forward. Poses are 4×4 matrices: ``c2w``
  (camera-to-world: columns are the camera axes and its centre in world coordinates) and
  ``w2c = inv(c2w)``. The first latent frame of an episode is the identity.
* Action / delta ``[dx, dy, dz, yaw, pitch, roll]``, per latent frame, in the *current*
  camera frame: translation in scene units (dx right, dy down, dz forward); rotations in
  degrees: +yaw turns right (about +y), +pitch looks up (about +x), +roll about +z
  (forward). A delta first rotates the camera, then moves it along its rotated axes:
  ``c2w_next = c2w @ [[R, R t], [0, 1]]`` with ``R = R_y(yaw) R_x(pitch) R_z(roll)``.
  This is minWM's convention (``wan_utils/camera_trajectory.py``: ``R ← R·rot_y·rot_x``,
  then ``t += R·step``), so its pose strings map to exactly these deltas.
* Intrinsics are normalised to the image size: ``[fx/W, fy/H, cx/W, cy/H]``.
* Latent frame k ↔ RGB frame 4k: per-RGB-frame poses become per-latent-frame poses by
  taking every ``temporal_factor``-th frame, then re-expressing them relative to the first.
* Stored poses follow minWM's dataset layout: w2c as ``[tx, ty, tz, qx, qy, qz, qw]``
  (scalar-last quaternion).

Everything is float64 torch; the batch dimensions are free (``(..., 4, 4)``).
"""

from __future__ import annotations

import math

import torch

DELTA_NAMES = ("dx", "dy", "dz", "yaw", "pitch", "roll")


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(torch.as_tensor(x)).all():
        raise ValueError(f"{what} contains NaN or inf")


def rotation_x(deg) -> torch.Tensor:
    a = torch.deg2rad(_f64(deg))
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*a.shape, 3, 3)


def rotation_y(deg) -> torch.Tensor:
    a = torch.deg2rad(_f64(deg))
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*a.shape, 3, 3)


def rotation_z(deg) -> torch.Tensor:
    a = torch.deg2rad(_f64(deg))
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*a.shape, 3, 3)


def make_pose(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    pose = torch.zeros(*rotation.shape[:-2], 4, 4, dtype=torch.float64)
    pose[..., :3, :3] = rotation
    pose[..., :3, 3] = translation
    pose[..., 3, 3] = 1
    return pose


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid transform (exact: R^T, -R^T t)."""
    pose = _f64(pose)
    rotation_t = pose[..., :3, :3].transpose(-1, -2)
    return make_pose(rotation_t, -(rotation_t @ pose[..., :3, 3:]).squeeze(-1))


def delta_to_matrix(delta) -> torch.Tensor:
    """(..., 6) deltas → (..., 4, 4) relative transforms in the current camera frame."""
    delta = _f64(delta)
    if delta.shape[-1] != 6:
        raise ValueError(f"a camera delta has 6 values {DELTA_NAMES}, got shape {tuple(delta.shape)}")
    check_finite(delta, "camera delta")
    rotation = rotation_y(delta[..., 3]) @ rotation_x(delta[..., 4]) @ rotation_z(delta[..., 5])
    return make_pose(rotation, (rotation @ delta[..., :3, None]).squeeze(-1))


def matrix_to_delta(transform) -> torch.Tensor:
    """Inverse of :func:`delta_to_matrix` (yaw-pitch-roll decomposition; |pitch| < 90°)."""
    transform = _f64(transform)
    r = transform[..., :3, :3]
    # R = R_y(yaw) R_x(pitch) R_z(roll): r[1,2] = -sin(pitch), r[0,2] = sin(yaw)cos(pitch),
    # r[2,2] = cos(yaw)cos(pitch), r[1,0] = cos(pitch)sin(roll), r[1,1] = cos(pitch)cos(roll).
    pitch = torch.asin((-r[..., 1, 2]).clamp(-1, 1))
    yaw = torch.atan2(r[..., 0, 2], r[..., 2, 2])
    roll = torch.atan2(r[..., 1, 0], r[..., 1, 1])
    local = (r.transpose(-1, -2) @ transform[..., :3, 3:]).squeeze(-1)
    return torch.cat([local, torch.rad2deg(torch.stack([yaw, pitch, roll], dim=-1))], dim=-1)


def compose_deltas(deltas, start_c2w: torch.Tensor | None = None) -> torch.Tensor:
    """(..., N, 6) deltas → (..., N + 1, 4, 4) c2w poses; pose 0 is ``start_c2w`` (identity)."""
    deltas = _f64(deltas)
    steps = delta_to_matrix(deltas)
    pose = torch.eye(4, dtype=torch.float64).expand(*deltas.shape[:-2], 4, 4) if start_c2w is None else _f64(start_c2w)
    poses = [pose]
    for i in range(deltas.shape[-2]):
        pose = pose @ steps[..., i, :, :]
        poses.append(pose)
    return torch.stack(poses, dim=-3)


def poses_to_deltas(c2w: torch.Tensor) -> torch.Tensor:
    """(..., N + 1, 4, 4) c2w poses → the (..., N, 6) deltas between consecutive poses."""
    c2w = _f64(c2w)
    relative = invert_pose(c2w[..., :-1, :, :]) @ c2w[..., 1:, :, :]
    return matrix_to_delta(relative)


def relative_to_first(c2w: torch.Tensor) -> torch.Tensor:
    """Re-express (..., N, 4, 4) c2w poses in the first camera's frame (pose 0 → identity)."""
    c2w = _f64(c2w)
    return invert_pose(c2w[..., :1, :, :]) @ c2w


def quaternion_to_rotation(quat) -> torch.Tensor:
    """Scalar-last unit quaternions (..., [qx, qy, qz, qw]) → (..., 3, 3)."""
    q = _f64(quat)
    norm = q.norm(dim=-1, keepdim=True)
    if (norm < 1e-8).any():
        raise ValueError("a quaternion has zero norm")
    x, y, z, w = (q / norm).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def rotation_to_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → scalar-last quaternions (..., 4) with qw >= 0."""
    r = _f64(rotation)
    trace = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    candidates = torch.stack([
        torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1], 1 + trace], -1),
        torch.stack([1 + r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2], r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0],
                     r[..., 2, 1] - r[..., 1, 2]], -1),
        torch.stack([r[..., 0, 1] + r[..., 1, 0], 1 + r[..., 1, 1] - r[..., 0, 0] - r[..., 2, 2], r[..., 1, 2] + r[..., 2, 1],
                     r[..., 0, 2] - r[..., 2, 0]], -1),
        torch.stack([r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1], 1 + r[..., 2, 2] - r[..., 0, 0] - r[..., 1, 1],
                     r[..., 1, 0] - r[..., 0, 1]], -1),
    ], dim=-2)  # (..., 4, 4): each row proportional to the quaternion; pick the best conditioned
    diag = torch.stack([1 + trace, 1 + r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2],
                        1 + r[..., 1, 1] - r[..., 0, 0] - r[..., 2, 2], 1 + r[..., 2, 2] - r[..., 0, 0] - r[..., 1, 1]], -1)
    best = diag.argmax(dim=-1, keepdim=True)
    quat = torch.take_along_dim(candidates, best[..., None], dim=-2).squeeze(-2)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return torch.where(quat[..., 3:] < 0, -quat, quat)


def w2c_from_vector(vector) -> torch.Tensor:
    """minWM's stored pose rows ``[tx, ty, tz, qx, qy, qz, qw]`` (w2c) → (..., 4, 4) w2c."""
    vector = _f64(vector)
    if vector.shape[-1] != 7:
        raise ValueError(f"a stored pose has 7 values [tx, ty, tz, qx, qy, qz, qw], got shape {tuple(vector.shape)}")
    check_finite(vector, "pose")
    return make_pose(quaternion_to_rotation(vector[..., 3:]), vector[..., :3])


def w2c_to_vector(w2c: torch.Tensor) -> torch.Tensor:
    w2c = _f64(w2c)
    return torch.cat([w2c[..., :3, 3], rotation_to_quaternion(w2c[..., :3, :3])], dim=-1)


def latent_frame_poses(rgb_c2w: torch.Tensor, temporal_factor: int = 4) -> torch.Tensor:
    """Per-RGB-frame c2w (T, 4, 4) with T = 1 + temporal_factor·k → per-latent-frame c2w
    (1 + k, 4, 4), relative to the first (latent frame k ↔ RGB frame temporal_factor·k)."""
    rgb_c2w = _f64(rgb_c2w)
    num_frames = rgb_c2w.shape[-3]
    if (num_frames - 1) % temporal_factor:
        raise ValueError(f"need 1 + {temporal_factor}k per-frame poses, got {num_frames}")
    return relative_to_first(rgb_c2w[..., ::temporal_factor, :, :])


def normalize_intrinsics(fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> torch.Tensor:
    return _f64([fx / width, fy / height, cx / width, cy / height])


def intrinsics_from_fov(fov_y_deg: float, width: int, height: int) -> torch.Tensor:
    """Normalised intrinsics of a pinhole camera with square pixels and a centred principal point."""
    fy = 0.5 / math.tan(math.radians(fov_y_deg) / 2)  # in units of the image height
    return _f64([fy * height / width, fy, 0.5, 0.5])


def intrinsics_matrix(intrinsics: torch.Tensor) -> torch.Tensor:
    """(..., 4) normalised [fx, fy, cx, cy] → (..., 4, 4) lifted intrinsics (K in the top-left)."""
    k = _f64(intrinsics)
    lifted = torch.zeros(*k.shape[:-1], 4, 4, dtype=torch.float64)
    lifted[..., 0, 0], lifted[..., 1, 1] = k[..., 0], k[..., 1]
    lifted[..., 0, 2], lifted[..., 1, 2] = k[..., 2], k[..., 3]
    lifted[..., 2, 2] = lifted[..., 3, 3] = 1
    return lifted


def plucker_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray embedding per pixel of an ``height × width`` grid (pixel centres).

    c2w (..., 4, 4), intrinsics (..., 4) normalised → (..., 6, height, width): the unit ray
    direction d in world coordinates and the moment o × d (o the camera centre).
    """
    c2w, k = _f64(c2w), _f64(intrinsics)
    v, u = torch.meshgrid((torch.arange(height, dtype=torch.float64) + 0.5) / height,
                          (torch.arange(width, dtype=torch.float64) + 0.5) / width, indexing="ij")
    fx, fy, cx, cy = (k[..., i, None, None] for i in range(4))
    directions = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as((u - cx) / fx)], dim=-1)
    directions = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], directions)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origin = c2w[..., None, None, :3, 3].expand_as(directions)
    moment = torch.linalg.cross(origin, directions, dim=-1)
    return torch.cat([directions, moment], dim=-1).movedim(-1, -3)
