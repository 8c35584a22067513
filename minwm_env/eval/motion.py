"""Camera motion estimated from frames: tracked or matched features, essential matrix, pose.

    motion = estimate_motion(frames, intrinsics)               # frames[0] → frames[-1], tracked through all
    motion = estimate_relative_motion(frame_a, frame_b, intrinsics, method="orb")
    rotation_error_deg(motion.rotation, commanded[:3, :3])

The result is the pose of the last camera in the first camera's frame, in our OpenCV
convention (x right, y down, z forward) — the same matrix ``camera.compose_deltas`` gives for
the commanded actions — so estimates and commands compare directly. Monocular two-view
geometry has no scale: only the translation *direction* is recovered.

At 64×64 a frame holds few corners, so frames are upscaled (``size``, default 128 pixels
wide) before detection. Methods:

* ``"klt"`` (default): Shi–Tomasi corners in the first frame tracked frame to frame with
  pyramidal Lucas–Kanade through every frame given, keeping only tracks that pass a
  forward–backward check. Small steps between consecutive frames track far more reliably
  than wide-baseline matching at this size.
* ``"orb"``, ``"sift"``: descriptors matched between the first and last frame only
  (mutual nearest neighbours).

When the points hardly move (median under :data:`STILL_PX`) the camera stood still: the
identity rotation and a zero translation are returned (an essential matrix needs parallax).
Otherwise two models are fitted: the essential matrix (``cv2.findEssentialMat``, MAGSAC++;
``cv2.recoverPose`` for the pose, by cheirality) and, since a pure rotation leaves the
essential matrix undefined, a rotation alone (2-point RANSAC on bearing vectors). Torr's GRIC
chooses between them (P. Torr, "Geometric motion segmentation and model selection", Phil.
Trans. R. Soc. A 356, 1998): each model's robust residual cost at the tracks' noise level
(:data:`TRACK_NOISE_PX`) plus a penalty for the dimension of its manifold and for its
parameters, so the essential matrix, which fits any track a little better, has to fit it
enough better to pay for its two extra degrees of freedom. A rotation is returned with a zero
translation. An essential matrix supported by fewer than :data:`MIN_ESSENTIAL_INLIERS` tracks
is refused (None): that few points at this size give a rotation more than 10° off as often as
not.

Measured on ground-truth renders of the ``room`` scene, layouts 100 and 101, at 64×64
(``python -m minwm_env.eval.motion_floor --layouts 100 101 --num-starts 96``: one chunk of 16
frames per estimate, commands of 12° and/or 0.32 units): median rotation error 0.3° for pure
yaw, 0.5° for pitch (means 0.4–0.7°; with the former rule, a rotation chosen when it explained
85% as many tracks as the essential matrix, yaws were off by up to 69° and up to a fifth of
them failed because the essential matrix's cheirality test left no point), 1° moving sideways,
2–4° moving forward or back, with or without turning, with means of 5–8° from a tail of
gross errors; translation direction error 4° sideways, 12–18° forward or back; 10–30% of the
estimates fail (a blank wall fills the view). Forward motion is the limit of estimating from
64×64 frames, not a bug: the tracks lie within 0.6 px (median; 90% within 1.7 px) of where
the exact geometry puts them, but a step forward moves them only about 3.5 px, and a turn
combined with a step sideways moves the few, mostly distant tracks almost the same way (the
bas-relief ambiguity). On each of 38 forward steps of layout 100 the estimated motion fits the
tracks better than the true motion does, the 5 that are more than 10° off included, so no
choice between two-view models recovers it; preferring no rotation (a translation-only model)
would fix straight walks but reads a walk with a 12° turn as a straight diagonal walk (more
than 10° off) in 16 to 33 of 48 steps, depending on how it is chosen. The scene's headlight
turns with the camera, so highlights move with the view, not with the scene: corners are taken
only where the image has real texture (:data:`CORNER_QUALITY`).
Treat single estimates as noisy, compare medians, and compare a model with the truth's own
estimates on the same path (the estimator's noise floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

METHODS = ("klt", "orb", "sift")
MIN_CORRESPONDENCES = 12
CORNER_QUALITY = 0.01  # Shi–Tomasi quality level, relative to the strongest corner
STILL_PX = 0.5  # median point motion (pixels of the upscaled image) below which the camera stood still
TRACK_NOISE_PX = 0.75  # track error in pixels of the frames as given (σ of GRIC): measured against the exact
# reprojection of 64x64 renders, median 0.6 px and 90th percentile 1.7 px
MIN_ESSENTIAL_INLIERS = 20  # below this an essential matrix's rotation is > 10° off in 35-60% of rendered steps


@dataclass
class RelativeMotion:
    """Pose of the last frame's camera in the first frame's camera (OpenCV axes)."""

    rotation: np.ndarray  # (3, 3)
    translation_direction: np.ndarray  # (3,) unit vector; zeros when none is measurable (still, pure rotation)
    num_correspondences: int  # tracked or matched points
    num_inliers: int  # points consistent with the essential matrix and in front of both cameras


def _gray(frame: np.ndarray, size: int) -> np.ndarray:
    height, width = frame.shape[:2]
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (size, max(1, round(height * size / width))), interpolation=cv2.INTER_CUBIC)


def _track(images: list[np.ndarray], fb_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """KLT tracks from the first to the last image; a track survives only if, at every step,
    tracking back lands within ``fb_threshold`` pixels of where it started."""
    corners = cv2.goodFeaturesToTrack(images[0], maxCorners=2000, qualityLevel=CORNER_QUALITY, minDistance=3)
    if corners is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    start, current = corners, corners
    window = dict(winSize=(21, 21), maxLevel=3)
    height, width = images[0].shape
    for previous, following in zip(images[:-1], images[1:]):
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, following, current, None, **window)
        back, status_back, _ = cv2.calcOpticalFlowPyrLK(following, previous, moved, None, **window)
        keep = (status.ravel() == 1) & (status_back.ravel() == 1)
        keep &= np.linalg.norm(back - current, axis=2).ravel() < fb_threshold
        x, y = moved[:, 0, 0], moved[:, 0, 1]
        keep &= (x >= 0) & (x < width) & (y >= 0) & (y < height)
        start, current = start[keep], moved[keep]
        if len(current) < MIN_CORRESPONDENCES:
            break
    return start.reshape(-1, 2), current.reshape(-1, 2)


def _match(image_a: np.ndarray, image_b: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "orb":
        detector, norm = cv2.ORB_create(3000, fastThreshold=5, edgeThreshold=15, patchSize=15), cv2.NORM_HAMMING
    else:
        detector, norm = cv2.SIFT_create(3000, contrastThreshold=0.01), cv2.NORM_L2
    keys_a, desc_a = detector.detectAndCompute(image_a, None)
    keys_b, desc_b = detector.detectAndCompute(image_b, None)
    if desc_a is None or desc_b is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matches = cv2.BFMatcher(norm, crossCheck=True).match(desc_a, desc_b)
    points_a = np.float32([keys_a[m.queryIdx].pt for m in matches]).reshape(-1, 2)
    points_b = np.float32([keys_b[m.trainIdx].pt for m in matches]).reshape(-1, 2)
    return points_a, points_b


def _kabsch(bearings_a: np.ndarray, bearings_b: np.ndarray) -> np.ndarray:
    """The rotation R minimising Σ |b − R a|² over unit bearing vectors (Kabsch / Wahba)."""
    u, _, vt = np.linalg.svd(bearings_a.T @ bearings_b)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    return vt.T @ flip @ u.T


def _rotation_only(bearings_a: np.ndarray, bearings_b: np.ndarray, tolerance: float,
                   iterations: int = 200) -> tuple[np.ndarray, int]:
    """RANSAC over 2-point rotations b = R a, refined on the inliers: (R, number of inliers).
    Seeded, so the same frames always give the same answer."""
    rng = np.random.default_rng(0)
    best = np.zeros(len(bearings_a), dtype=bool)
    for _ in range(iterations):
        pick = rng.choice(len(bearings_a), 2, replace=False)
        rotation = _kabsch(bearings_a[pick], bearings_b[pick])
        inliers = np.linalg.norm(bearings_b - bearings_a @ rotation.T, axis=1) < tolerance
        if inliers.sum() > best.sum():
            best = inliers
    rotation = _kabsch(bearings_a[best], bearings_b[best])
    return rotation, int((np.linalg.norm(bearings_b - bearings_a @ rotation.T, axis=1) < tolerance).sum())


def _sampson_sq(points_a: np.ndarray, points_b: np.ndarray, matrix: np.ndarray, essential: np.ndarray) -> np.ndarray:
    """Squared Sampson distances (pixels²) of the tracks to the epipolar geometry of ``essential``."""
    inverse = np.linalg.inv(matrix)
    fundamental = inverse.T @ essential @ inverse
    a, b = np.c_[points_a, np.ones(len(points_a))], np.c_[points_b, np.ones(len(points_b))]
    line_b, line_a = a @ fundamental.T, b @ fundamental  # epipolar lines in b and in a
    gradient = line_b[:, 0] ** 2 + line_b[:, 1] ** 2 + line_a[:, 0] ** 2 + line_a[:, 1] ** 2
    return np.sum(b * line_b, axis=1) ** 2 / np.maximum(gradient, 1e-300)


def _transfer_sq(points_a: np.ndarray, points_b: np.ndarray, matrix: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Squared distances (pixels²) between the tracks' end points and their start points rotated."""
    rays = _bearings(points_a, matrix) @ rotation.T
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = (rays / rays[:, 2:]) @ matrix.T
    distance = np.sum((projected[:, :2] - points_b) ** 2, axis=1)
    return np.where(np.isfinite(distance) & (rays[:, 2] > 0), distance, np.inf)


def _gric(residuals_sq: np.ndarray, dimension: int, parameters: int) -> float:
    """Torr's GRIC of a model on two-view tracks (data dimension 4) from the squared residuals in
    units of the noise variance: the robust residual cost
    (capped at 2·(4 − dimension)) + ln 4 per track and dimension of the model's manifold (3 for
    an essential matrix, 2 for a rotation) + ln(4n) per parameter. Lower is better."""
    num = len(residuals_sq)
    cost = np.minimum(residuals_sq, 2.0 * (4 - dimension))
    return float(cost.sum() + math.log(4) * dimension * num + math.log(4 * num) * parameters)


def _bearings(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    rays = np.c_[(points[:, 0] - matrix[0, 2]) / matrix[0, 0], (points[:, 1] - matrix[1, 2]) / matrix[1, 1],
                 np.ones(len(points))]
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def estimate_motion(frames, intrinsics, *, method: str = "klt", size: int = 128,
                    threshold_px: float = 2.0) -> RelativeMotion | None:
    """Camera motion from ``frames[0]`` to ``frames[-1]`` of uint8 frames (T ≥ 2, H, W, 3).

    ``intrinsics`` are normalised ``[fx/W, fy/H, cx/W, cy/H]``; ``threshold_px`` is the
    RANSAC threshold in pixels of the upscaled image. Returns None when too few points
    correspond, or no rotation explains them and no essential matrix is found or it rests on
    fewer than :data:`MIN_ESSENTIAL_INLIERS` tracks (count these as failures).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ValueError(f"frames must be uint8 (T >= 2, H, W, 3), got {frames.dtype} {frames.shape}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if intrinsics.shape != (4,) or not np.isfinite(intrinsics).all() or (intrinsics[:2] <= 0).any():
        raise ValueError(f"intrinsics must be 4 finite values [fx/W, fy/H, cx/W, cy/H] with fx, fy > 0, "
                         f"got {intrinsics}")
    if method == "klt":
        points_a, points_b = _track([_gray(f, size) for f in frames])
        image_shape = _gray(frames[0], size).shape
    else:
        image_a, image_b = _gray(frames[0], size), _gray(frames[-1], size)
        points_a, points_b = _match(image_a, image_b, method)
        image_shape = image_a.shape
    if len(points_a) < MIN_CORRESPONDENCES:
        return None
    if np.median(np.linalg.norm(points_b - points_a, axis=1)) < STILL_PX:
        # No parallax to explain: the camera stood still (the essential matrix is undefined here).
        return RelativeMotion(np.eye(3), np.zeros(3), len(points_a), len(points_a))
    height, width = image_shape
    fx, fy, cx, cy = intrinsics * [width, height, width, height]
    matrix = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    # A pure rotation has no baseline: the essential matrix is then undefined, its pose arbitrary
    # and its cheirality test may leave no point at all. Both models are fitted; GRIC chooses.
    pure, pure_inliers = _rotation_only(_bearings(points_a, matrix), _bearings(points_b, matrix), threshold_px / fx)
    essential, mask = cv2.findEssentialMat(points_a, points_b, matrix, method=cv2.USAC_MAGSAC, prob=0.9999,
                                           threshold=threshold_px)
    found = essential is not None and essential.shape[0] >= 3 and mask is not None
    noise = TRACK_NOISE_PX * width / frames.shape[2]  # in pixels of the upscaled image
    essential_gric = _gric(_sampson_sq(points_a, points_b, matrix, essential[:3]) / noise ** 2, 3, 5) if found \
        else math.inf
    rotation_gric = _gric(_transfer_sq(points_a, points_b, matrix, pure) / noise ** 2, 2, 3)
    if rotation_gric <= essential_gric and pure_inliers >= len(points_a) / 2:
        return RelativeMotion(pure.T, np.zeros(3), len(points_a), pure_inliers)  # pure maps a's rays to b's
    if not found:
        return None
    inliers, rotation, translation, _ = cv2.recoverPose(essential[:3], points_a, points_b, matrix, mask=mask.copy())
    if inliers < MIN_ESSENTIAL_INLIERS:
        return None
    # recoverPose maps points from camera a to camera b: X_b = R X_a + t. The pose of camera b
    # in a's frame is the inverse: rotation Rᵀ, centre −Rᵀ t.
    pose_rotation = rotation.T
    direction = -rotation.T @ translation.ravel()
    return RelativeMotion(pose_rotation, direction / np.linalg.norm(direction), len(points_a), int(inliers))


def image_flow(frames, *, size: int = 128) -> np.ndarray | None:
    """Median displacement (dx, dy) of features tracked from ``frames[0]`` to ``frames[-1]``, as
    fractions of the image width and height; None when nothing can be tracked. The coarsest
    and most robust sign of which way the view moved (no geometry involved)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ValueError(f"frames must be uint8 (T >= 2, H, W, 3), got {frames.dtype} {frames.shape}")
    images = [_gray(f, size) for f in frames]
    points_a, points_b = _track(images)
    if len(points_a) < MIN_CORRESPONDENCES:
        return None
    height, width = images[0].shape
    return np.median(points_b - points_a, axis=0) / [width, height]


def expected_flow(motion: np.ndarray, intrinsics, depth: float = 2.0) -> np.ndarray:
    """Where the image centre goes under a camera motion (4×4 pose of the new camera in the old
    one), for a point ``depth`` units ahead: (dx, dy) as fractions of the image size."""
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
    point = np.linalg.inv(np.asarray(motion, dtype=np.float64)) @ [0.0, 0.0, depth, 1.0]
    return np.array([fx * point[0] / point[2], fy * point[1] / point[2]])


def estimate_relative_motion(frame_a, frame_b, intrinsics, *, method: str = "klt", size: int = 128,
                             threshold_px: float = 2.0) -> RelativeMotion | None:
    """Camera motion from one frame to another (see :func:`estimate_motion`)."""
    return estimate_motion(np.stack([np.asarray(frame_a), np.asarray(frame_b)]), intrinsics, method=method,
                           size=size, threshold_px=threshold_px)


__all__ = ["METHODS", "RelativeMotion", "estimate_motion", "estimate_relative_motion", "expected_flow", "image_flow"]
