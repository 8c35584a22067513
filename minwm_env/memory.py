"""Spatial memory: past clean frames, kept by where they were seen, fill what the last frame never saw.

    memory = ViewMemory(batch_size=2, capacity=32, height=64, width=64)
    memory.add(frames, c2w)                                   # after each chunk: its last clean RGB frame
    colours, validity = memory.composite(colours, validity, target_c2w, intrinsics, depth=2.0, k=4,
                                         fill="border")       # the last frame's warp, gaps filled

Issue 19: a place the camera has seen should look the same when the camera comes back. The
warped reference (docs/design.md §6, :mod:`minwm_env.warp`) only carries the *last* clean
frame, so after looking away and back everything the last frame does not show is invalid and
the model draws it anew. This module keeps past clean RGB frames with their camera poses, a
bounded store per episode (row), and fills those gaps with the stored frames' pixels,
reprojected into the new cameras by the same plane warp (:func:`~minwm_env.warp.warp_image`).
A pure rotation back to a stored view then reproduces it exactly (up to bilinear resampling);
a translation brings the plane warp's parallax error, which grows with the distance to the
stored camera, hence the preference for near cameras in :meth:`ViewMemory.retrieve`.

Three decisions, each documented where it is taken:

- what is kept (:meth:`ViewMemory.add`): a near-duplicate of a stored place supersedes it; a full
  row keeps its newest frames and thins the older ones where they are most crowded in pose
  space, so the store stays spread over the places visited and its size never grows;
- what is retrieved (:meth:`ViewMemory.retrieve`): greedily, the stored frames that see most of
  the gaps, measured on one ray per cell of a coarse grid, nearer cameras winning near-ties;
- how it is composited (:meth:`ViewMemory.composite`): front to back "over" by validity, the
  last frame's warp in front, then the retrieved frames in retrieval order; pixels the last
  frame's warp sees are never changed.

Poses are OpenCV camera-to-world (docs/design.md §5), float64; intrinsics are normalised
``[fx/W, fy/H, cx/W, cy/H]`` and shared by the stored and the target cameras (one model's).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .warp import BLOCK_PIXELS, WARP_FILLS, parallel_map, warp_image, warp_image_depth


SHARPEN_WEIGHT = 0.02
"""How much a generation saved on a whole target weighs against filling it: 50 generations saved
on every pixel rank like filling every gap (:meth:`ViewMemory.retrieve`)."""
SHARPEN_MARGIN = 0.5
"""Generations a stored frame must save on a pixel before it replaces the last frame's warp there:
below this the bilinear generations of two warps of the same frame differ by rounding."""


class Retrieval(NamedTuple):
    """What :meth:`ViewMemory.retrieve` found for each row, best first."""

    indices: torch.Tensor  # (B, k) int64 slots of the store; -1 where nothing (more) was found
    scores: torch.Tensor  # (B, k) float64 fraction of the target rays each pick adds; 0 where -1


class CompositeReference(NamedTuple):
    """The reference after filling: what :meth:`ViewMemory.composite` returns."""

    colours: torch.Tensor  # (B, 3, N, H, W)
    validity: torch.Tensor  # (B, 1, N, H, W) in [0, 1]
    generation: torch.Tensor | None = None  # (B, 1, N, H, W) resamplings per pixel, when asked for


def _invert(c2w: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid (..., 4, 4) poses, on their own device: [Rᵀ, −Rᵀt]."""
    rotation_t = c2w[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(c2w)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ c2w[..., :3, 3:]).squeeze(-1)
    inverse[..., 3, 3] = 1
    return inverse


def _centre_distance(stored_c2w: torch.Tensor, target_c2w: torch.Tensor) -> torch.Tensor:
    """Mean distance (world units) from each stored camera's centre (B, S, 4, 4) to the target
    cameras' centres (B, N, 4, 4) → (B, S)."""
    return (stored_c2w[:, :, None, :3, 3] - target_c2w[:, None, :, :3, 3]).norm(dim=-1).mean(2)


def pose_distance(a: torch.Tensor, b: torch.Tensor, translation_weight: float) -> torch.Tensor:
    """How different two camera poses are: the angle of the rotation between them (radians)
    plus ``translation_weight`` (radians per world unit) times the distance between their
    centres. a, b (..., 4, 4) c2w, broadcast → (...)."""
    relative = a[..., :3, :3].transpose(-1, -2) @ b[..., :3, :3]
    trace = relative.diagonal(dim1=-2, dim2=-1).sum(-1)
    angle = torch.acos(((trace - 1) / 2).clamp(-1.0, 1.0))
    return angle + translation_weight * (a[..., :3, 3] - b[..., :3, 3]).norm(dim=-1)


class ViewMemory:
    """A bounded store of clean RGB frames and their camera poses, one per row (episode).

    Storage is allocated once (``capacity`` slots per row), so memory and the cost of every
    call are flat however long an episode runs:

    - ``frames`` (B, capacity, channels, H, W) in ``dtype``: the frames, RGB in [-1, 1] as the
      codec decodes them (not clamped here), or latent frames for a memory read from the KV
      cache (``channels`` = the latent's, H, W the latent size; :meth:`composite` needs RGB);
    - ``c2w`` (B, capacity, 4, 4) float64: each frame's camera-to-world pose;
    - ``places`` (B, capacity, 4, 4) float64: the place each slot stands for, the pose of the
      first frame stored there (a near-duplicate that supersedes the frame keeps the place);
    - ``occupied`` (B, capacity) bool: which slots hold a frame;
    - ``added_at`` (B, capacity) int64: the row's add count when the slot was written (1 for
      the row's first frame), i.e. each frame's age; ``num_added`` (B,) the row's add count.

    Rows never see each other's frames: every call works row by row (batched).

    Arguments:
        batch_size: number of rows (independent episodes).
        capacity: frames kept per row (at least 1).
        height, width: frame size in pixels (latent cells for latent frames).
        device, dtype: where and how the frames are stored (poses are always float64).
        duplicate_distance: a new frame whose :func:`pose_distance` to a stored frame's place is
            below this supersedes that frame (radians; 0.05 ≈ 3° or 0.05 units at the default
            weight; one action step is at most 6° and 0.16 units).
        translation_weight: radians per world unit in :func:`pose_distance` (1.0: a step of
            0.25 units counts like a 14° turn).
        num_recent: the newest stored frames a full row never evicts (default ``capacity // 2``):
            looking away and back within the last ``num_recent`` adds always finds its frames.
        grid_size: cells per side of each target image, one ray each, that :meth:`retrieve`
            tests (8: 64 rays a target; at most the image's smaller side).
        parallax_scale: world units; a stored camera this far from the targets must fill twice
            as much as one at the targets to be picked first (its rank key is its fill divided by
            ``1 + distance / parallax_scale``): the plane warp is wrong off the plane by an amount
            that grows with that distance.
        valid_threshold: a pixel of the last frame's warp with validity below this is a gap that
            :meth:`composite` fills (bilinear validity inside the image is 1 up to rounding).
    """

    def __init__(self, batch_size: int, capacity: int, height: int, width: int, *, device="cpu",
                 dtype: torch.dtype = torch.float32, duplicate_distance: float = 0.05,
                 translation_weight: float = 1.0, num_recent: int | None = None, grid_size: int = 8,
                 parallax_scale: float = 1.0, valid_threshold: float = 0.999, channels: int = 3):
        for name, value in (("batch_size", batch_size), ("capacity", capacity), ("height", height),
                            ("width", width), ("grid_size", grid_size), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        num_recent = capacity // 2 if num_recent is None else num_recent
        if isinstance(num_recent, bool) or not isinstance(num_recent, int) or not 0 <= num_recent < capacity:
            raise ValueError(f"num_recent must be an integer in [0, capacity - 1] = [0, {capacity - 1}], "
                             f"got {num_recent!r}")
        for name, value in (("duplicate_distance", duplicate_distance), ("translation_weight", translation_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not parallax_scale > 0:
            raise ValueError(f"parallax_scale must be a positive number (world units), got {parallax_scale!r}")
        if grid_size > min(height, width):
            raise ValueError(f"grid_size must be at most the image's smaller side {min(height, width)}, "
                             f"got {grid_size}")
        if not 0 < valid_threshold <= 1:
            raise ValueError(f"valid_threshold must be in (0, 1], got {valid_threshold!r}")
        self.batch_size, self.capacity, self.height, self.width = batch_size, capacity, height, width
        self.device, self.dtype = torch.device(device), dtype
        self.duplicate_distance, self.translation_weight = duplicate_distance, translation_weight
        self.num_recent, self.grid_size = num_recent, grid_size
        self.parallax_scale, self.valid_threshold = parallax_scale, valid_threshold
        self.channels = channels
        self.frames = torch.zeros(batch_size, capacity, channels, height, width, device=self.device, dtype=dtype)
        # empty slots hold the identity, so distances to them stay finite before being masked
        self.c2w = torch.eye(4, dtype=torch.float64, device=self.device).repeat(batch_size, capacity, 1, 1)
        self.places = self.c2w.clone()
        self.occupied = torch.zeros(batch_size, capacity, dtype=torch.bool, device=self.device)
        self.added_at = torch.zeros(batch_size, capacity, dtype=torch.int64, device=self.device)
        self.num_added = torch.zeros(batch_size, dtype=torch.int64, device=self.device)
        # each stored frame's depth, computed by a depth net the first time composite needs it
        # and kept while the frame is: a frame is retrieved many times, its depth never changes
        self.depths = torch.zeros(batch_size, capacity, height, width, device=self.device, dtype=dtype)
        self.has_depth = torch.zeros(batch_size, capacity, dtype=torch.bool, device=self.device)
        self._depth_net = None  # the net self.depths came from
        # how many resamplings each stored pixel has been through since it was observed or drawn
        # (0: as observed or as the network drew it), what composite(..., generation=) ranks by
        self.generations = torch.zeros(batch_size, capacity, height, width, device=self.device, dtype=dtype)

    @property
    def num_frames(self) -> torch.Tensor:
        """(B,) frames held by each row."""
        return self.occupied.sum(1)

    @property
    def nbytes(self) -> int:
        """Bytes of the store's tensors (fixed at construction)."""
        return sum(t.nbytes for t in (self.frames, self.c2w, self.places, self.occupied, self.added_at, self.num_added,
                                      self.depths, self.has_depth, self.generations))

    # ---------------------------------------------------------------- checks

    def _rows(self, rows: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        if rows is None:
            return torch.arange(self.batch_size, device=self.device)
        index = torch.as_tensor(rows)
        if index.numel() == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        if index.ndim != 1 or index.dtype in (torch.bool,) or index.is_floating_point() or index.is_complex():
            raise ValueError(f"rows must be a 1-D list of row indices, got {rows!r}")
        if len(index) and (index.min() < 0 or index.max() >= self.batch_size):
            raise ValueError(f"rows must lie in [0, {self.batch_size - 1}], got {index.tolist()}")
        if len(set(index.tolist())) != len(index):
            raise ValueError(f"rows must not repeat, got {index.tolist()}")
        return index.to(self.device, torch.int64)

    def _poses(self, c2w: torch.Tensor, shape: tuple, what: str) -> torch.Tensor:
        """``c2w`` checked to be finite rigid camera-to-world poses of ``shape`` → float64 on our device."""
        c2w = torch.as_tensor(c2w)
        if tuple(c2w.shape) != shape:
            raise ValueError(f"{what} must have shape {shape}, got {tuple(c2w.shape)}")
        c2w = c2w.to(self.device, torch.float64)
        if not torch.isfinite(c2w).all():
            raise ValueError(f"{what} contains NaN or inf")
        if c2w.numel() == 0:
            return c2w
        rotation = c2w[..., :3, :3]
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=self.device)
        eye = torch.eye(3, dtype=torch.float64, device=self.device)
        not_orthonormal = (rotation.transpose(-1, -2) @ rotation - eye).abs().amax() > 1e-4
        if (c2w[..., 3, :] - bottom).abs().amax() > 1e-6 or not_orthonormal or (torch.linalg.det(rotation) <= 0).any():
            raise ValueError(f"{what} must be rigid camera-to-world poses ([[R, t], [0, 0, 0, 1]], R a rotation)")
        return c2w

    def _targets(self, target_c2w: torch.Tensor) -> torch.Tensor:
        target_c2w = torch.as_tensor(target_c2w)
        if target_c2w.ndim != 4 or target_c2w.shape[0] != self.batch_size or target_c2w.shape[1] < 1:
            raise ValueError(f"target_c2w must have shape (B, N, 4, 4) with B = {self.batch_size}, N >= 1, "
                             f"got {tuple(target_c2w.shape)}")
        return self._poses(target_c2w, (self.batch_size, target_c2w.shape[1], 4, 4), "target_c2w")

    def _intrinsics(self, intrinsics: torch.Tensor) -> torch.Tensor:
        intrinsics = torch.as_tensor(intrinsics)
        if tuple(intrinsics.shape) != (self.batch_size, 4):
            raise ValueError(f"intrinsics must have shape (B, 4) = ({self.batch_size}, 4), "
                             f"got {tuple(intrinsics.shape)}")
        intrinsics = intrinsics.to(self.device, torch.float64)
        if not torch.isfinite(intrinsics).all() or (intrinsics[:, :2] <= 0).any():
            raise ValueError(f"intrinsics must be finite with fx, fy > 0, got {intrinsics.tolist()}")
        return intrinsics

    @staticmethod
    def _check_k_depth(k: int, depth: float | None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k (frames to retrieve) must be an integer >= 0, got {k!r}")
        if depth is not None and not (isinstance(depth, (int, float)) and math.isfinite(depth) and depth > 0):
            raise ValueError(f"depth must be a positive number or None (infinitely far), got {depth!r}")

    # ---------------------------------------------------------------- storing

    def clear(self, rows: Sequence[int] | torch.Tensor | None = None) -> None:
        """Empty ``rows`` (all by default), e.g. when their episodes reset."""
        index = self._rows(rows)
        self.occupied[index] = False
        self.added_at[index] = 0
        self.num_added[index] = 0
        self.c2w[index] = torch.eye(4, dtype=torch.float64, device=self.device)
        self.places[index] = torch.eye(4, dtype=torch.float64, device=self.device)
        self.frames[index] = 0
        self.has_depth[index] = False
        self.generations[index] = 0

    @torch.no_grad()
    def add(self, frames: torch.Tensor, c2w: torch.Tensor, rows: Sequence[int] | torch.Tensor | None = None,
            generations: torch.Tensor | None = None, depths: torch.Tensor | None = None, depth_net=None) -> None:
        """Store one frame per row: ``frames`` (b, channels, H, W) seen from ``c2w`` (b, 4, 4), for all
        rows (b = B) or for the listed ``rows`` (b = len(rows)); ``generations`` (b, H, W), how
        many resamplings each pixel has been through (default 0: an observed frame; see
        :meth:`composite`'s ``generation``); ``depths`` (b, H, W), the frames' depth by
        ``depth_net``, kept as if :meth:`composite` had computed it (a stream that has just
        computed it for its own warp saves the depth net a call).

        The frame is stored in, in this order:

        1. the slot whose place (the pose of the first frame stored there) is nearest in
           :func:`pose_distance`, if nearer than ``duplicate_distance``: a near-duplicate is
           superseded, the newest wins (it is the latest picture of that view), and the slot
           keeps its place; unless the new frame has been resampled more (a higher mean
           generation): then the stored one is the sharper picture of the view and stays, and
           the new frame is not stored (nothing changes for that row; without generations
           all are 0 and the newest always wins). Standing still would otherwise replace the
           start frame by ever more resampled copies of it. Why the place and not the stored
           pose: a slow walk in steps below the threshold would otherwise supersede its way
           along the whole path and leave one frame; with fixed places a walk keeps one frame
           every ``duplicate_distance``;
        2. a free slot;
        3. in a full row, a frame of the *pool*, the frames older than the ``num_recent`` newest:
           the one whose place is the most crowded, i.e. has the smallest sum of
           :func:`pose_distance` to its two nearest pool neighbours' places; ties go to the
           oldest. The recent frames keep "look away and back" exact for a while; thinning
           the pool where it is densest keeps it spread over every region of pose space
           visited, so a place seen long ago stays represented. Why within the pool, and two
           neighbours: measured along a 1000-add walk, crowding counted against the recent
           frames evicts every frame as it leaves the recent window (it is always near them)
           and the nearest neighbour alone ties along an evenly spaced path and eats its start.
        """
        index = self._rows(rows)
        num_rows = len(index)
        frames = torch.as_tensor(frames)
        if tuple(frames.shape) != (num_rows, self.channels, self.height, self.width):
            raise ValueError(f"frames must have shape (b, channels, H, W) = ({num_rows}, {self.channels}, "
                             f"{self.height}, {self.width}), "
                             f"got {tuple(frames.shape)}")
        if not torch.isfinite(frames).all():
            raise ValueError("frames contain NaN or inf")
        c2w = self._poses(c2w, (num_rows, 4, 4), "c2w")
        if generations is None:
            generations = torch.zeros(num_rows, self.height, self.width)
        generations = torch.as_tensor(generations)
        if tuple(generations.shape) != (num_rows, self.height, self.width):
            raise ValueError(f"generations must have shape (b, H, W) = ({num_rows}, {self.height}, {self.width}), "
                             f"got {tuple(generations.shape)}")
        if not torch.isfinite(generations).all() or (generations < 0).any():
            raise ValueError("generations must be finite and >= 0")
        if depths is not None:
            depths = torch.as_tensor(depths)
            if tuple(depths.shape) != (num_rows, self.height, self.width):
                raise ValueError(f"depths must have shape (b, H, W) = ({num_rows}, {self.height}, {self.width}), "
                                 f"got {tuple(depths.shape)}")
            if torch.isnan(depths).any() or (depths <= 0).any() or depth_net is None:
                raise ValueError("depths must be positive (inf for the sky) and come with the depth_net that made them")
        if num_rows == 0:
            return
        slots, superseded = self._slots_for(index, c2w)
        generations = generations.to(self.device, self.dtype)
        sharper_kept = superseded & (generations.mean(dim=(1, 2)) > self.generations[index, slots].mean(dim=(1, 2)))
        if sharper_kept.any():
            index, slots, frames, c2w, generations, superseded = (
                t[~sharper_kept] for t in (index, slots, frames, c2w, generations, superseded))
            depths = None if depths is None else depths[~sharper_kept]
        self.num_added[index] += 1
        self.frames[index, slots] = frames.to(self.device, self.dtype)
        self.c2w[index, slots] = c2w
        self.places[index, slots] = torch.where(superseded[:, None, None], self.places[index, slots], c2w)
        self.occupied[index, slots] = True
        self.has_depth[index, slots] = False
        self.generations[index, slots] = generations
        if depths is not None:
            if depth_net is not self._depth_net:  # what is kept was another net's
                self.has_depth.zero_()
                self._depth_net = depth_net
            self.depths[index, slots] = depths.to(self.device, self.dtype)
            self.has_depth[index, slots] = True
        self.added_at[index, slots] = self.num_added[index]

    def _slots_for(self, index: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot (b,) each listed row's new frame (pose ``c2w`` (b, 4, 4)) goes to, by the rule
        of :meth:`add`, and (b,) whether it supersedes a near-duplicate (the slot keeps its place)."""
        places, occupied, age = self.places[index], self.occupied[index], self.added_at[index]  # (b, S, ...)
        inf = torch.tensor(math.inf, dtype=torch.float64, device=self.device)
        to_new = torch.where(occupied, pose_distance(places, c2w[:, None], self.translation_weight), inf)  # (b, S)
        nearest_distance, nearest = to_new.min(1)
        duplicate = nearest_distance < self.duplicate_distance
        free = ~occupied
        # full rows: the older frames (all but the num_recent newest) are a pool kept spread out;
        # evict the pool's most crowded place, the one nearest its two nearest pool neighbours
        newer = (age[:, None, :] > age[:, :, None]).sum(2)  # (b, S) how many stored frames are newer
        pool = occupied & (newer >= self.num_recent)
        pairwise = pose_distance(places[:, :, None], places[:, None], self.translation_weight)  # (b, S, S)
        pairwise = pairwise.masked_fill(~pool[:, None, :] | torch.eye(self.capacity, dtype=torch.bool,
                                                                       device=self.device), math.inf)
        crowding = pairwise.topk(min(2, self.capacity), dim=2, largest=False).values.sum(2)  # (b, S)
        crowding = torch.where(pool, crowding, inf)
        most_crowded = pool & (crowding <= crowding.amin(1, keepdim=True) + 1e-12)
        evict = torch.where(most_crowded, age, torch.iinfo(torch.int64).max).argmin(1)  # the oldest of the ties
        slots = torch.where(duplicate, nearest, torch.where(free.any(1), free.int().argmax(1), evict))
        return slots, duplicate

    # ---------------------------------------------------------------- retrieving

    def coverage(self, target_c2w: torch.Tensor, intrinsics: torch.Tensor, depth: float | None,
                 gaps: torch.Tensor | None = None) -> torch.Tensor:
        """Which target rays each stored frame sees → (B, capacity, N, grid_size²) bool.

        target_c2w (B, N, 4, 4); intrinsics (B, 4); gaps (B, N, H, W) bool or None: see
        :meth:`retrieve`. Each target's image is cut into ``grid_size`` × ``grid_size`` cells
        (``adaptive_avg_pool2d``'s) with one ray each, through the centroid of the cell's gap
        pixels (the cell's centre without ``gaps``, or where the cell has none). The ray is cut
        by the plane ``depth`` in front of the target camera (``None``: at infinity), as
        :func:`~minwm_env.warp.warp_image` does, and is seen when that point lies in front of
        the stored camera and at least half a pixel inside its image (where a bilinear warp is
        fully valid). Empty slots see nothing.
        """
        target_c2w = self._targets(target_c2w)
        intrinsics = self._intrinsics(intrinsics)
        self._check_k_depth(0, depth)
        _, u, v = self._rays(self._gaps(gaps, target_c2w.shape[1]))
        return self._coverage(target_c2w, intrinsics, depth, u, v)

    def _gaps(self, gaps: torch.Tensor | None, num_targets: int) -> torch.Tensor | None:
        if gaps is None:
            return None
        gaps = torch.as_tensor(gaps)
        if tuple(gaps.shape) != (self.batch_size, num_targets, self.height, self.width) or gaps.dtype != torch.bool:
            raise ValueError(f"gaps must be a bool tensor of shape (B, N, H, W) = ({self.batch_size}, {num_targets}, "
                             f"{self.height}, {self.width}), got {gaps.dtype} {tuple(gaps.shape)}")
        return gaps.to(self.device)

    def _rays(self, gaps: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One ray per grid cell: (need, u, v). need (B, N, G²) float64, the share of the cell's
        pixels that are gaps (None without ``gaps``: all needed); u, v (B or 1, N or 1, G²)
        normalised positions: the centroid of the cell's gap pixels, else the cell's centre.

        Why the gaps' centroid and not a fixed grid: a fixed ray can fall where the last frame
        does see while the rest of its cell is a gap; the last frame itself (stored too) then
        "covers" the cell, is retrieved first and uses up its need (measured along the
        benchmark's walk: at 3 of 8 checks), and a fixed grid of cell centres misses the
        few-pixel gaps of the image's top and bottom rows after a turn back. A ray inside the gap
        is seen by a stored frame only if that frame can fill it."""
        grid, height, width = self.grid_size, self.height, self.width
        rows = (torch.arange(height, dtype=torch.float64, device=self.device) + 0.5) / height
        columns = (torch.arange(width, dtype=torch.float64, device=self.device) + 0.5) / width
        v, u = torch.meshgrid(rows, columns, indexing="ij")
        centre_u = F.adaptive_avg_pool2d(u[None], grid).reshape(1, 1, -1)  # (1, 1, G²)
        centre_v = F.adaptive_avg_pool2d(v[None], grid).reshape(1, 1, -1)
        if gaps is None:
            return None, centre_u, centre_v
        batch, num_targets = gaps.shape[:2]
        mask = gaps.to(torch.float64).flatten(0, 1)  # (B·N, H, W)
        share = F.adaptive_avg_pool2d(mask, grid).reshape(batch, num_targets, -1)  # (B, N, G²)
        safe = share.clamp_min(1e-12)
        gap_u = F.adaptive_avg_pool2d(mask * u, grid).reshape(batch, num_targets, -1) / safe
        gap_v = F.adaptive_avg_pool2d(mask * v, grid).reshape(batch, num_targets, -1) / safe
        return share, torch.where(share > 0, gap_u, centre_u), torch.where(share > 0, gap_v, centre_v)

    def _coverage(self, target_c2w: torch.Tensor, intrinsics: torch.Tensor, depth: float | None,
                  u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._project(target_c2w, intrinsics, depth, u, v)[0]

    def _project(self, target_c2w: torch.Tensor, intrinsics: torch.Tensor, depth: float | None,
                 u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rays (u, v) of the targets cut by the plane ``depth``, seen from every stored
        camera: (seen, u_stored, v_stored), each (B, S, N, G²); seen is :meth:`coverage`'s."""
        fx, fy, cx, cy = (intrinsics[:, i, None, None] for i in range(4))  # (B, 1, 1)
        x, y = (u - cx) / fx, (v - cy) / fy  # (B, N or 1, G²)
        num_targets = target_c2w.shape[1]
        x, y = x.expand(-1, num_targets, -1), y.expand(-1, num_targets, -1)
        points = torch.stack([x, y, torch.ones_like(x), torch.full_like(x, 0.0 if depth is None else 1.0 / depth)],
                             dim=-1)  # (B, N, G², 4) homogeneous points on the plane z = depth of each target
        to_stored = _invert(self.c2w)[:, :, None] @ target_c2w[:, None]  # (B, S, N, 4, 4)
        seen = torch.einsum("bsnij,bngj->bsngi", to_stored, points)  # (B, S, N, G², 4)
        in_front = seen[..., 2] > 1e-6
        z = torch.where(in_front, seen[..., 2], torch.ones_like(seen[..., 2]))
        u_stored = fx[:, None] * seen[..., 0] / z + cx[:, None]
        v_stored = fy[:, None] * seen[..., 1] / z + cy[:, None]
        # half a pixel in from the border (a hair less, so a camera sees its own border pixels)
        margin_u, margin_v = 0.5 / self.width - 1e-9, 0.5 / self.height - 1e-9
        inside = ((u_stored >= margin_u) & (u_stored <= 1 - margin_u) & (v_stored >= margin_v)
                  & (v_stored <= 1 - margin_v))
        return in_front & inside & self.occupied[:, :, None, None], u_stored, v_stored

    def _generations_at(self, u_stored: torch.Tensor, v_stored: torch.Tensor) -> torch.Tensor:
        """The stored generations (bilinear) where rays land in each stored image: u, v (B, S, N,
        G²) normalised positions → (B, S, N, G²) float64."""
        batch, slots = u_stored.shape[:2]
        grid = torch.stack([2 * u_stored - 1, 2 * v_stored - 1], dim=-1).flatten(0, 1)  # (B·S, N, G², 2)
        maps = self.generations.flatten(0, 1)[:, None].to(torch.float64)  # (B·S, 1, H, W)
        sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return sampled.reshape(batch, slots, *u_stored.shape[2:])

    @torch.no_grad()
    def retrieve(self, target_c2w: torch.Tensor, intrinsics: torch.Tensor, k: int, depth: float | None,
                 *, gaps: torch.Tensor | None = None, generation: torch.Tensor | None = None,
                 sharpen_distance: float = math.inf) -> Retrieval:
        """Up to ``k`` stored frames per row that best cover the targets' view, best first.

        target_c2w (B, N, 4, 4): the cameras of the new chunk's frames; intrinsics (B, 4);
        depth: the warp plane's distance (use the model's ``warp_depth``); gaps (B, N, H, W)
        bool: the target pixels that still need one (default: all; :meth:`composite` passes
        the last frame's warp's pixels with validity below ``valid_threshold``).

        Greedy, like set cover, on one ray per cell of a ``grid_size`` grid per target
        (:meth:`coverage`), each weighted by the share of its cell's pixels that are gaps: each
        pick is the stored frame whose seen rays weigh most, averaged over the N targets, divided
        by ``1 + distance / parallax_scale`` with its mean distance to the target cameras (so
        among near-ties the nearer camera, whose plane warp is less wrong, wins; a ratio, not a
        difference, because gaps are often a few percent of the image: measured, a subtracted
        0.1 per unit let the last frame itself, filling 0.3%, beat frames a unit away filling
        6%); the rays it sees are then no longer needed. The score is thus an estimate of the
        share of the targets' pixels the pick fills (without ``gaps``, of the targets' view it
        sees). Picking stops when no frame adds anything.

        Returns :class:`Retrieval`: indices (B, k) slots, -1 where the row has no (more) frame
        that adds coverage; scores (B, k) as above, 0 at -1. The cost is O(k · capacity · N ·
        grid_size²) plus pooling the gaps, bounded however long the episode.

        ``generation`` (B, N, H, W), with ``gaps``: how many resamplings each target pixel that
        is not a gap has been through (the last frame's warp's, :meth:`composite`). A stored
        frame whose camera centre is within ``sharpen_distance`` of the targets' (mean) then
        also gains, on one ray per cell centre that it sees, ``SHARPEN_WEIGHT`` times the
        generations it saves there (the pixel's generation less the stored one + 1, less
        ``SHARPEN_MARGIN``, times the share of the cell that is not a gap); a pick lowers the
        generations of the rays it sees.
        """
        self._check_k_depth(k, depth)
        target_c2w = self._targets(target_c2w)
        num_targets = target_c2w.shape[1]
        intrinsics = self._intrinsics(intrinsics)
        gaps = self._gaps(gaps, num_targets)
        if generation is not None and gaps is None:
            raise ValueError("generation needs gaps (the pixels that are not gaps are the ones a pick may sharpen)")
        need, u, v = self._rays(gaps)
        if need is None:
            need = torch.ones(self.batch_size, num_targets, self.grid_size ** 2, dtype=torch.float64,
                              device=self.device)

        indices = torch.full((self.batch_size, k), -1, dtype=torch.int64, device=self.device)
        scores = torch.zeros(self.batch_size, k, dtype=torch.float64, device=self.device)
        if k == 0 or not self.occupied.any():
            return Retrieval(indices, scores)
        covered = self._coverage(target_c2w, intrinsics, depth, u, v).double()  # (B, S, N, G²)
        distance = _centre_distance(self.c2w, target_c2w)  # (B, S)
        discount = 1 + distance / self.parallax_scale
        available = self.occupied.clone()
        rows = torch.arange(self.batch_size, device=self.device)
        sharpen = generation is not None
        if sharpen:
            sees, brings, current, share = self._sharpening(target_c2w, intrinsics, depth, gaps, self._check_generation(
                generation, (self.batch_size, num_targets, self.height, self.width)), distance <= sharpen_distance)
        for rank in range(min(k, self.capacity)):
            gain = (covered * need[:, None]).mean(dim=(2, 3))  # (B, S) share of all target pixels
            if sharpen:
                saved = (current[:, None] - brings - SHARPEN_MARGIN).clamp_min(0) * share[:, None] * sees
                gain = gain + SHARPEN_WEIGHT * saved.mean(dim=(2, 3))
            key = torch.where(available & (gain > 0), gain / discount, -math.inf)
            best_key, best = key.max(1)
            found = torch.isfinite(best_key)
            if not found.any():
                break
            indices[:, rank] = torch.where(found, best, -1)
            scores[:, rank] = torch.where(found, gain[rows, best], 0.0)
            available[rows[found], best[found]] = False
            need = need * (1 - covered[rows, best] * found[:, None, None])
            if sharpen:
                picked = sees[rows, best] & found[:, None, None]
                current = torch.where(picked, torch.minimum(current, brings[rows, best]), current)
        return Retrieval(indices, scores)

    def _sharpening(self, target_c2w, intrinsics, depth, gaps, generation, near):
        """What :meth:`retrieve` ranks sharpening by, on one ray per cell centre: (sees (B, S, N,
        G²) bool: a near stored frame sees the ray; brings (B, S, N, G²): the generation its
        warp would give there; current (B, N, G²): the mean generation of the cell's pixels that
        are not gaps; share (B, N, G²): their share of the cell)."""
        _, centre_u, centre_v = self._rays(None)
        sees, u_stored, v_stored = self._project(target_c2w, intrinsics, depth, centre_u, centre_v)
        brings = self._generations_at(u_stored, v_stored) + 1
        kept = (~gaps).to(torch.float64).flatten(0, 1)  # (B·N, H, W)
        grid = self.grid_size
        share = F.adaptive_avg_pool2d(kept, grid).reshape(*gaps.shape[:2], -1)  # (B, N, G²)
        summed = F.adaptive_avg_pool2d(kept * generation.flatten(0, 1).to(torch.float64), grid)
        current = summed.reshape(share.shape) / share.clamp_min(1e-12)
        return sees & near[:, :, None, None], brings, current, share

    def _check_generation(self, generation: torch.Tensor, shape: tuple) -> torch.Tensor:
        generation = torch.as_tensor(generation)
        if tuple(generation.shape) != shape:
            raise ValueError(f"generation must have shape {shape}, got {tuple(generation.shape)}")
        if not torch.isfinite(generation).all() or (generation < 0).any():
            raise ValueError("generation must be finite and >= 0")
        return generation.to(self.device)

    # ---------------------------------------------------------------- compositing

    @torch.no_grad()
    def _stored_depth(self, rows: torch.Tensor, slots: torch.Tensor, used: torch.Tensor, depth_net) -> torch.Tensor:
        """The depth (B, m, H, W) of the stored frames at ``slots`` (B, m), by ``depth_net``:
        computed for the ``used`` ones it was not computed for yet, kept for the next time."""
        if depth_net is not self._depth_net:  # another net: what is kept is not its depth
            self.has_depth.zero_()
            self._depth_net = depth_net
        missing = used & ~self.has_depth[rows, slots]
        if missing.any():
            row_index, slot_index = rows.expand_as(slots)[missing], slots[missing]
            frames = self.frames[row_index, slot_index]
            depth = depth_net.depth(frames) if hasattr(depth_net, "depth") else depth_net(frames)
            self.depths[row_index, slot_index] = depth.to(self.device, self.dtype)
            self.has_depth[row_index, slot_index] = True
        # a row's unused picks (fewer frames found than the others) add nothing: any positive depth
        return torch.where(used[:, :, None, None], self.depths[rows, slots], torch.ones((), dtype=self.dtype))

    @torch.no_grad()
    def composite(self, reference: torch.Tensor, validity: torch.Tensor, target_c2w: torch.Tensor,
                  intrinsics: torch.Tensor, depth: float | None, k: int, *, fill: str,
                  depth_net=None, generation: torch.Tensor | None = None,
                  sharpen_distance: float = math.inf) -> CompositeReference:
        """Fill the gaps of the last frame's warp with stored frames warped into the same cameras.

        reference (B, 3, N, H, W) and validity (B, 1, N, H, W): the last clean frame warped into
        the N target cameras ``target_c2w`` (B, N, 4, 4), i.e. ``warp_image(..., depth, fill,
        with_validity=True)`` split into colours and validity; intrinsics (B, 4); depth: the
        same plane as that warp (the model's ``warp_depth``); k: stored frames to use at most;
        fill: the ``fill`` that warp used ("border" or "blank"), which fixes how colours of
        partly valid pixels read (below).

        Pixels with validity ≥ ``valid_threshold`` are never changed. Every other pixel is
        composited front to back, "over" by validity: the last frame's warp first, then the
        frames of :meth:`retrieve` (asked for the gap rays) in retrieval order, each warped with
        zero padding so its colour is premultiplied by its validity ``v``:

            C ← C + (1 − A)·colour,  A ← A + (1 − A)·v,  starting from A = validity, C = A·reference

        so the best frame supplies the gap where it sees it, the next one what is left, and a
        seam blends by validity. The new validity is A. Colours: with ``fill="blank"`` the warp's
        colours are premultiplied (never-seen pixels are zero) and the result stays so (C, and
        C starts as the reference itself); with ``"border"`` they are not, and the result is
        C / A where a stored frame added something, the border streak where none did.

        ``depth_net`` (a :class:`~minwm_env.depth.DepthNet`, or any callable from frames in
        [-1, 1] (M, 3, H, W) to z-depth (M, H, W)): the stored frames are reprojected through
        their own depth (:func:`~minwm_env.warp.warp_image_depth`) instead of the plane, as the
        last frame's warp of a model that warps through depth is; retrieval still ranks by the
        plane. Each stored frame's depth is computed once, the first time it is used, and kept
        with the frame (:attr:`depths`) while the same net is passed.

        ``generation`` (B, 1, N, H, W): how many resamplings each pixel of the last frame's warp
        has been through, counting that warp (the stored frame's own, :attr:`generations`, plus
        one). Each bilinear resampling softens the image a little, and a stream that warps its
        last frame into the next camera chunk after chunk resamples what it has seen once per
        chunk: measured on the shipped model's held-out paths, seen pixels kept 0.55–0.65 of the
        truth's detail after 16 chunks where one warp of the start frame keeps 0.8. With
        ``generation`` the stored frames also *sharpen*: retrieval (:meth:`retrieve`) also ranks
        the frames within ``sharpen_distance`` (world units, camera centre to the targets') by
        the generations they save, and after compositing, every pixel that such a frame's warp
        covers fully (validity ≥ ``valid_threshold``) takes that warp's colour wherever it has
        been resampled at least ``SHARPEN_MARGIN`` fewer times than what is there, the fewest
        first. The distance cap is there because a far camera's warp carries the depth's error
        times the distance (measured: on forward walks of 16 chunks one warp of the start frame
        scored 1.8–3.8 dB below the chained warps). The result then carries ``generation`` (the
        chosen warp's, blended by weight where frames are composited) and, unlike without it, may
        change pixels the last frame's warp sees.

        With an empty store, k = 0, or no gap any stored frame sees, the inputs come back as they
        are (the same tensors). Returns :class:`CompositeReference`.
        """
        if fill not in WARP_FILLS:
            raise ValueError(f"fill must be one of {WARP_FILLS} (the last frame's warp fill), got {fill!r}")
        if self.channels != 3:
            raise ValueError(f"composite warps RGB frames; this store holds {self.channels}-channel frames")
        reference, validity = torch.as_tensor(reference), torch.as_tensor(validity)
        if reference.ndim != 5 or reference.shape[:2] != (self.batch_size, 3) or \
                reference.shape[3:] != (self.height, self.width):
            raise ValueError(f"reference must have shape (B, 3, N, H, W) = ({self.batch_size}, 3, N, {self.height}, "
                             f"{self.width}), got {tuple(reference.shape)}")
        batch, _, num_targets, height, width = reference.shape
        if tuple(validity.shape) != (batch, 1, num_targets, height, width):
            raise ValueError(f"validity must have shape (B, 1, N, H, W) = {(batch, 1, num_targets, height, width)}, "
                             f"got {tuple(validity.shape)}")
        if not torch.isfinite(validity).all() or (validity < 0).any() or (validity > 1 + 1e-3).any():
            raise ValueError("validity must be finite and in [0, 1]")
        if tuple(torch.as_tensor(target_c2w).shape) != (batch, num_targets, 4, 4):
            raise ValueError(f"target_c2w must have shape (B, N, 4, 4) = ({batch}, {num_targets}, 4, 4), got "
                             f"{tuple(torch.as_tensor(target_c2w).shape)}")
        self._check_k_depth(k, depth)
        sharpen = generation is not None
        if sharpen:
            generation = self._check_generation(generation, tuple(validity.shape)).to(reference.device, reference.dtype)
        if not sharpen_distance >= 0:
            raise ValueError(f"sharpen_distance must be >= 0 (world units), got {sharpen_distance!r}")
        gaps = validity < self.valid_threshold  # (B, 1, N, H, W)
        found = self.retrieve(target_c2w, intrinsics, k, depth, gaps=gaps[:, 0],
                              generation=generation[:, 0] if sharpen else None, sharpen_distance=sharpen_distance)
        num_used = int((found.indices >= 0).sum(1).max()) if k else 0
        if num_used == 0:
            return CompositeReference(reference, validity, generation)

        used = found.indices[:, :num_used] >= 0  # (B, m)
        slots = found.indices[:, :num_used].clamp_min(0)
        rows = torch.arange(batch, device=self.device)[:, None]
        own = None if depth_net is None else self._stored_depth(rows, slots, used, depth_net)  # (B, m, H, W)
        # a block of rows at a time, the blocks in threads: measured with 8 rows of 16 targets, the
        # whole batch at once ran this method's own arithmetic 13× slower than one row, not 8×
        # (its tensors left the CPU's cache), and one thread ran it all
        per_block = max(1, BLOCK_PIXELS // (num_targets * height * width))

        def block(first):
            index = slice(first, first + per_block)
            return self._composite_rows(index, reference[index], validity[index], gaps[index],
                                        torch.as_tensor(target_c2w)[index], torch.as_tensor(intrinsics)[index], depth,
                                        fill, None if generation is None else generation[index], used[index],
                                        slots[index], None if own is None else own[index], sharpen_distance)

        parts = parallel_map(block, range(0, batch, per_block))
        if len(parts) == 1:
            return parts[0]
        return CompositeReference(*(None if part[0] is None else torch.cat(part) for part in zip(*parts)))

    def _composite_rows(self, index: slice, reference, validity, gaps, target_c2w, intrinsics, depth, fill,
                        generation, used, slots, own, sharpen_distance) -> CompositeReference:
        """:meth:`composite` after retrieval, for the rows ``index`` of the store: ``used`` and
        ``slots`` (b, m) their picks, ``own`` (b, m, H, W) the picks' depth (None: the plane)."""
        batch, _, num_targets, height, width = reference.shape
        num_used = used.shape[1]
        sharpen = generation is not None
        rows = torch.arange(self.batch_size, device=self.device)[index, None]
        target_c2w = torch.as_tensor(target_c2w).to(self.device, torch.float64)
        intrinsics = torch.as_tensor(intrinsics).to(self.device, torch.float64)
        stored, stored_c2w = self.frames[rows, slots], self.c2w[rows, slots].flatten(0, 1)
        if sharpen:  # the generations travel as a fourth channel
            stored = torch.cat([stored, self.generations[rows, slots][:, :, None]], dim=2)
        stored = stored.flatten(0, 1)
        channels = stored.shape[1]
        targets, stored_k = target_c2w.repeat_interleave(num_used, 0), intrinsics.repeat_interleave(num_used, 0)
        if own is None:
            warped = warp_image(stored, stored_c2w, targets, stored_k, depth, fill="blank",
                                with_validity=True)  # (B·m, channels + 1, N, H, W), premultiplied
        else:
            own = own.flatten(0, 1)
            warped = warp_image_depth(stored, own, stored_c2w, targets, stored_k, fill="blank", with_validity=True,
                                      fill_depth=depth, plane_fill=False)  # uncovered: zero, premultiplied
            warped = torch.cat([warped[:, :channels] * warped[:, channels:], warped[:, channels:]], dim=1)
        warped = warped.reshape(batch, num_used, channels + 1, num_targets, height, width).to(reference.device,
                                                                                              reference.dtype)
        warped = warped * used.to(warped.device)[:, :, None, None, None, None]  # a row's missing picks add nothing

        alpha = validity.to(reference.dtype)
        tiny = torch.finfo(alpha.dtype).tiny
        colour = reference * alpha if fill == "border" else reference
        if sharpen:  # premultiplied like the colours; each stored frame's warp adds one resampling
            weighted = generation * alpha
            warped_generation = warped[:, :, 3:4] + warped[:, :, 4:]
        for rank in range(num_used):
            uncovered = 1 - alpha
            colour = colour + uncovered * warped[:, rank, :3]
            if sharpen:
                weighted = weighted + uncovered * warped_generation[:, rank]
            alpha = alpha + uncovered * warped[:, rank, -1:]
        added = gaps.to(reference.device) & (alpha > validity)
        if fill == "border":
            colour = colour / alpha.clamp_min(tiny)
        colours, validity = torch.where(added, colour, reference), torch.where(added, alpha.clamp(max=1), validity)
        if not sharpen:
            return CompositeReference(colours, validity)
        generation = torch.where(added, weighted / alpha.clamp_min(tiny), generation)
        near = used & (_centre_distance(self.c2w[rows, slots], target_c2w) <= sharpen_distance)  # (B, m)
        near = near.to(reference.device)
        for rank in range(num_used):
            weight = warped[:, rank, -1:]
            full = weight >= self.valid_threshold
            candidate = warped_generation[:, rank] / weight.clamp_min(tiny)
            current = torch.where(validity >= self.valid_threshold, generation, torch.full_like(generation, math.inf))
            better = full & near[:, rank, None, None, None, None] & (candidate < current - SHARPEN_MARGIN)
            candidate_colours = warped[:, rank, :3]  # premultiplied, as a "blank" reference is
            if fill == "border":
                candidate_colours = candidate_colours / weight.clamp_min(tiny)
            colours = torch.where(better, candidate_colours, colours)
            validity = torch.where(better, weight.clamp(max=1), validity)
            generation = torch.where(better, candidate, generation)
        return CompositeReference(colours, validity, generation)
