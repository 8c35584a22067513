"""Frame metrics as pure functions on uint8 frames ``(T, H, W, 3)`` (or one frame ``(H, W, 3)``).

* :func:`psnr` — peak signal-to-noise ratio in dB over all pixels and channels of each frame
  (peak 255); identical frames give ``inf``. :func:`pooled_psnr` — the PSNR of the mean
  squared error over many frames (how sequences are summarised). :func:`capped` turns ``inf``
  into :data:`PSNR_CAP_DB` where values go to JSON.
* :func:`ssim` — structural similarity (Wang et al. 2004, eq. 13) on luminance
  ``Y = 0.299 R + 0.587 G + 0.114 B``, with an 11×11 Gaussian window of σ = 1.5, constants
  ``C1 = (0.01·255)²``, ``C2 = (0.03·255)²``, averaged over the window positions that fit
  inside the frame (no padding). Identical frames give exactly 1.
* :func:`flicker` — mean absolute difference of consecutive frames (0..255 units): how much
  the picture changes from one frame to the next. Motion changes it too, so compare a model
  with the truth along the same path (:func:`flicker_ratio`: 1 = changes as much as the truth).
* :func:`loop_closure_error` — mean absolute difference between the first and the last frame
  of an out-and-back path (0..255 units; 0 = back exactly where it started).
* :func:`rotation_error_deg`, :func:`translation_direction_error_deg` — angles between
  rotations (geodesic) and between translation directions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_LUMA = np.array([0.299, 0.587, 0.114])


def _frames(x, what: str) -> np.ndarray:
    """uint8 (H, W, 3) or (T, H, W, 3) → float64 (T, H, W, 3)."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 frames (values 0..255), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3) or (T, H, W, 3), got {x.shape}")
    return x.astype(np.float64)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _frames(a, "a"), _frames(b, "b")
    if a.shape[1:] != b.shape[1:] or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(f"frames to compare must have the same shape (or one frame against many), "
                         f"got {a.shape} and {b.shape}")
    return np.broadcast_arrays(a, b)


def mse(a, b) -> np.ndarray:
    """Per-frame mean squared error (0..255 units), shape (T,). A single frame on either side
    is compared with every frame of the other."""
    a, b = _pair(a, b)
    return ((a - b) ** 2).mean(axis=(1, 2, 3))


def psnr_from_mse(mse_values) -> np.ndarray:
    """PSNR in dB of mean squared errors (peak 255); ``inf`` where the error is 0."""
    mse_values = np.asarray(mse_values, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(mse_values == 0, np.inf, 10 * np.log10(255.0 ** 2 / np.maximum(mse_values, 1e-300)))


def psnr(a, b) -> np.ndarray:
    """Per-frame PSNR in dB, shape (T,); ``inf`` where the frames are identical."""
    return psnr_from_mse(mse(a, b))


def pooled_psnr(a, b) -> float:
    """PSNR of the mean squared error over all frames, capped at :data:`PSNR_CAP_DB`. Unlike a
    mean of per-frame PSNRs, a few identical frames cannot dominate it."""
    return float(capped(psnr_from_mse(mse(a, b).mean())))


def capped(values, cap: float = PSNR_CAP_DB) -> np.ndarray:
    """PSNR values with ``inf`` (identical frames) replaced by ``cap``, for means and JSON."""
    return np.minimum(np.asarray(values, dtype=np.float64), cap)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def ssim_index(luma_a, luma_b, blur):
    """The SSIM index at every window position of two luminance arrays (numpy or torch), with
    ``blur`` the windowed mean (constants of Wang et al. 2004 for 8-bit images)."""
    mu_a, mu_b = blur(luma_a), blur(luma_b)
    var_a = blur(luma_a * luma_a) - mu_a ** 2
    var_b = blur(luma_b * luma_b) - mu_b ** 2
    cov = blur(luma_a * luma_b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(a, b, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Per-frame SSIM on luminance, shape (T,), in [-1, 1] (1 = identical); see the module doc."""
    a, b = _pair(a, b)
    if min(a.shape[1:3]) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window} pixels, got {a.shape[1]}x{a.shape[2]}")
    luma_a = torch.from_numpy(a @ _LUMA)[:, None]  # (T, 1, H, W)
    luma_b = torch.from_numpy(b @ _LUMA)[:, None]
    g = _gaussian_window(window, sigma)
    rows, cols = g.view(1, 1, window, 1), g.view(1, 1, 1, window)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian filter, valid positions only
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, rows), cols)

    index = ssim_index(luma_a, luma_b, blur)
    same = (luma_a == luma_b).flatten(1).all(dim=1)  # exactly 1 for identical frames (no rounding)
    return torch.where(same, torch.ones(()), index.mean(dim=(1, 2, 3))).numpy()


def mean_abs_difference(a, b) -> np.ndarray:
    """Per-frame mean absolute difference (0..255 units), shape (T,)."""
    a, b = _pair(a, b)
    return np.abs(a - b).mean(axis=(1, 2, 3))


def flicker(frames) -> float:
    """Mean absolute difference of consecutive frames of one sequence (0..255 units)."""
    frames = _frames(frames, "frames")
    if len(frames) < 2:
        raise ValueError(f"flicker needs at least 2 frames, got {len(frames)}")
    return float(np.abs(np.diff(frames, axis=0)).mean())


def flicker_ratio(frames, truth_frames) -> float:
    """``flicker(frames) / flicker(truth_frames)`` along the same path: 1 changes as much as the
    truth, above 1 flickers, below 1 is too still; ``inf`` if the truth never changes and the
    frames do, 1 when neither changes."""
    model, truth = flicker(frames), flicker(truth_frames)
    if truth == 0:
        return 1.0 if model == 0 else math.inf
    return model / truth


def loop_closure_error(frames) -> float:
    """Mean absolute difference between the first and the last frame (0..255 units)."""
    frames = _frames(frames, "frames")
    return float(np.abs(frames[-1] - frames[0]).mean())


def rotation_angle_deg(rotation) -> np.ndarray:
    """Angle of rotation matrices (..., 3, 3) in degrees, from ``atan2(sin, cos)`` (accurate
    near 0° and 180°, where ``arccos`` of the trace is not)."""
    r = np.asarray(rotation, dtype=np.float64)
    cosine = (np.trace(r, axis1=-2, axis2=-1) - 1) / 2
    axis = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], axis=-1)
    return np.degrees(np.arctan2(np.linalg.norm(axis, axis=-1) / 2, cosine))


def rotation_error_deg(estimated, reference) -> np.ndarray:
    """Geodesic angle between rotations (..., 3, 3): the angle of ``estimatedᵀ · reference``."""
    estimated, reference = np.asarray(estimated, np.float64), np.asarray(reference, np.float64)
    return rotation_angle_deg(np.swapaxes(estimated, -1, -2) @ reference)


def translation_direction_error_deg(estimated, reference, min_norm: float = 1e-9) -> np.ndarray:
    """Angle between translation directions (..., 3) in degrees; NaN where either vector is zero
    (a direction is undefined when the camera does not move)."""
    estimated, reference = np.asarray(estimated, np.float64), np.asarray(reference, np.float64)
    norm_e = np.linalg.norm(estimated, axis=-1)
    norm_r = np.linalg.norm(reference, axis=-1)
    valid = (norm_e > min_norm) & (norm_r > min_norm)
    cosine = (estimated * reference).sum(-1) / np.where(valid, norm_e * norm_r, 1.0)
    return np.where(valid, np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))), np.nan)


__all__ = ["PSNR_CAP_DB", "capped", "flicker", "flicker_ratio", "loop_closure_error", "mean_abs_difference", "mse",
           "pooled_psnr", "psnr", "psnr_from_mse",
           "rotation_angle_deg", "rotation_error_deg", "ssim", "translation_direction_error_deg"]
