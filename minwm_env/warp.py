"""A geometric residual reference: the last clean frame warped to each new frame's camera.

A residual model (``ModelSettings.residual_reference``) adds its output to a reference latent.
Plainly that reference is the last clean frame, so a commanded turn has to be produced by the
network as a whole-image shift, which a small model learns slowly and then half-commits to
(measured: a 12° turn comes out as 0–6 px where the truth moves 12 px, docs/default_model.md).
With ``warp_reference`` the reference of each new frame is the last clean RGB frame reprojected
into that frame's camera. A rotation is known exactly from the command (the homography
``K R K⁻¹`` does not depend on depth); a translation's reprojection needs depth, which we take
as one plane at ``warp_depth`` in front of the new camera (``None``: infinitely far, i.e. the
rotation alone). The network then only learns what the warp cannot know: parallax, the strip
that comes into view, light. Needs a codec whose latents are pixels (space-to-depth).

Poses within a latent frame follow the world's own interpolation (the delta from the previous
latent frame's pose, scaled by ``j / temporal_factor``), so training (poses from data) and
streaming (poses from actions) build the same references.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from . import camera


def rgb_frame_poses(previous_c2w: torch.Tensor, c2w: torch.Tensor, temporal_factor: int) -> torch.Tensor:
    """c2w of the RGB frames inside latent frames.

    previous_c2w (..., 4, 4): the pose of the latent frame before each one; c2w (..., 4, 4):
    the latent frames' poses → (..., temporal_factor, 4, 4): RGB frame j (1..temporal_factor)
    is ``previous @ delta(previous → c2w) · j / temporal_factor``, the last one ``c2w`` itself.
    """
    previous_c2w, c2w = previous_c2w.double(), c2w.double()
    delta = camera.matrix_to_delta(camera.invert_pose(previous_c2w) @ c2w)  # (..., 6)
    fractions = torch.arange(1, temporal_factor + 1, dtype=torch.float64, device=c2w.device) / temporal_factor
    steps = camera.delta_to_matrix(delta[..., None, :] * fractions[:, None])  # (..., T, 4, 4)
    poses = previous_c2w[..., None, :, :] @ steps
    poses[..., -1, :, :] = c2w
    return poses


WARP_FILLS = ("border", "blank")
WARP_DEPTH_SOURCES = ("plane", "model")


def warp_image(image: torch.Tensor, source_c2w: torch.Tensor, target_c2w: torch.Tensor, intrinsics: torch.Tensor,
               depth: float | None = None, fill: str = "border", with_validity: bool = False) -> torch.Tensor:
    """Reproject ``image`` (B, C, H, W), seen from ``source_c2w`` (B, 4, 4), into the cameras
    ``target_c2w`` (B, N, 4, 4) → (B, C, N, H, W).

    intrinsics (B, 4) normalised [fx/W, fy/H, cx/W, cy/H], shared by both cameras. Each target
    pixel's ray meets a plane at ``depth`` in front of the target camera (``None``: at
    infinity, so only the rotation matters); that point is looked up in the source image
    (bilinear). Points outside the source view, or behind the source camera, take its nearest
    border pixel (``fill="border"``) or zero (``"blank"``). ``with_validity`` appends each
    pixel's validity as a last channel (B, C + 1, N, H, W): a channel of ones warped with zero
    padding, 1 where the source saw the pixel, 0 where it did not, fractional on the seam.
    """
    if fill not in WARP_FILLS:
        raise ValueError(f"warp fill must be one of {WARP_FILLS}, got {fill!r}")
    batch, channels, height, width = image.shape
    num_targets = target_c2w.shape[1]
    if source_c2w.shape != (batch, 4, 4) or target_c2w.shape != (batch, num_targets, 4, 4):
        raise ValueError(f"poses must be (B, 4, 4) and (B, N, 4, 4) for B={batch}, got "
                         f"{tuple(source_c2w.shape)} and {tuple(target_c2w.shape)}")
    if intrinsics.shape != (batch, 4):
        raise ValueError(f"intrinsics must be (B, 4) = ({batch}, 4), got {tuple(intrinsics.shape)}")
    if depth is not None and not (math.isfinite(depth) and depth > 0):
        raise ValueError(f"warp depth must be a positive number or None (infinitely far), got {depth}")
    device = image.device
    k = intrinsics.to(device, torch.float64)
    fx, fy, cx, cy = (k[:, i, None, None, None] for i in range(4))  # (B, 1, 1, 1)
    v, u = torch.meshgrid((torch.arange(height, dtype=torch.float64, device=device) + 0.5) / height,
                          (torch.arange(width, dtype=torch.float64, device=device) + 0.5) / width, indexing="ij")
    # homogeneous points (x, y, 1, 1/depth) on the plane z = depth of each target camera
    x, y = ((u - cx) / fx).expand(-1, num_targets, -1, -1), ((v - cy) / fy).expand(-1, num_targets, -1, -1)
    inverse_depth = 0.0 if depth is None else 1.0 / depth
    points = torch.stack([x, y, torch.ones_like(x), torch.full_like(x, inverse_depth)], dim=-1)  # (B, N, H, W, 4)
    to_source = camera.invert_pose(source_c2w.to(device, torch.float64))[:, None] @ target_c2w.to(device, torch.float64)  # (B, N, 4, 4)
    seen = torch.einsum("bnij,bnhwj->bnhwi", to_source, points)
    in_front = seen[..., 2] > 1e-6
    z = torch.where(in_front, seen[..., 2], torch.ones_like(seen[..., 2]))
    u_source = fx * seen[..., 0] / z + cx
    v_source = fy * seen[..., 1] / z + cy
    grid = torch.stack([2 * u_source - 1, 2 * v_source - 1], dim=-1)
    grid = torch.where(in_front[..., None], grid, torch.full_like(grid, 2.0)).clamp(-2, 2)
    grid = grid.reshape(batch * num_targets, height, width, 2).to(image.dtype)
    source = image[:, None].expand(-1, num_targets, -1, -1, -1).reshape(batch * num_targets, channels, height, width)
    padding = "border" if fill == "border" else "zeros"
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    if with_validity:
        ones = torch.ones_like(source[:, :1])
        warped = torch.cat([warped, F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=False)], dim=1)
        channels += 1
    return warped.reshape(batch, num_targets, channels, height, width).transpose(1, 2)


FAR_DEPTH = 1.0e4
"""z-depth (world units) standing for the sky in :func:`warp_image_depth`: translations of a
few units move it by far less than a pixel, so it reprojects with the rotation alone"""


def _projection(intrinsics: torch.Tensor, from_c2w: torch.Tensor, to_c2w: torch.Tensor, height: int,
                width: int) -> torch.Tensor:
    """(B, N, 3, 4) float32 matrices taking a point of the ``from`` camera (B, 4, 4) to the
    homogeneous pixel coordinates (column, row, 1)·z of each ``to`` camera (B, N, 4, 4) of an
    image ``height`` × ``width``. The poses are composed in float64, then rounded once."""
    k = intrinsics.to(torch.float64)
    pixels = torch.zeros(k.shape[0], 3, 3, dtype=torch.float64, device=k.device)
    pixels[:, 0, 0], pixels[:, 0, 2] = k[:, 0] * width, k[:, 2] * width
    pixels[:, 1, 1], pixels[:, 1, 2] = k[:, 1] * height, k[:, 3] * height
    pixels[:, 2, 2] = 1.0
    relative = camera.invert_pose(to_c2w.to(k.device, torch.float64)) @ from_c2w.to(k.device, torch.float64)[:, None]
    return (pixels[:, None] @ relative[..., :3, :]).float()


def _project_depth(depth: torch.Tensor, intrinsics: torch.Tensor, projection: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lift every pixel of ``depth`` (B, 1 or N, H, W; z-depth, finite) through its camera
    (``intrinsics`` (B, 4), normalised) and project it with ``projection`` (B, N, 3, 4,
    :func:`_projection`) → (column, row, z), each (B, N, H, W): where each point lands
    (fractional pixel units of the projection) and its depth there.

    A pixel's ray is (x(column), y(row), 1), so a row of the projection applied to the ray is
    a column term plus a row term: sums of two small vectors instead of a (H·W × 3) product per
    camera, which CPU matrix kernels run slowly at an inner size of 3."""
    height, width = depth.shape[-2:]
    k = intrinsics.to(depth.device, torch.float32)
    x = ((torch.arange(width, device=depth.device, dtype=torch.float32) + 0.5) / width - k[:, 2, None]) / k[:, 0, None]
    y = ((torch.arange(height, device=depth.device, dtype=torch.float32) + 0.5) / height - k[:, 3, None]) / k[:, 1, None]
    x, y = x[:, None, None, :], y[:, None, :, None]  # (B, 1, 1, W), (B, 1, H, 1)
    m = projection[..., None, None]  # (B, N, 3, 4, 1, 1)
    out = [depth * (m[:, :, i, 0] * x + m[:, :, i, 1] * y + m[:, :, i, 2]) + m[:, :, i, 3] for i in range(3)]
    return out[0] / out[2], out[1] / out[2], out[2]


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (workers, process id, pool)
_POOL_PREFIX = "minwm-blocks"


def parallel_map(function, items) -> list:
    """``[function(item) for item in items]``, spread over torch's intra-op threads.

    For work made of many small tensor operations (a block of rows each), which torch runs on
    one core because each is below its parallel grain: torch releases Python's lock inside an
    operation, so blocks in separate threads run on separate cores. Each thread runs under the
    caller's grad and inference modes (they are per thread in torch). With one torch thread, or
    one item, or called from a block already running in the pool (its workers may all be busy
    waiting on blocks: nested, it would deadlock), it is the plain loop.
    """
    global _POOL
    items = list(items)
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
        return [function(item) for item in items]
    if _POOL is None or _POOL[:2] != (workers, os.getpid()):
        if _POOL is not None and _POOL[1] == os.getpid():
            _POOL[2].shutdown(wait=False)
        # a forked child inherits the pool without its threads: it builds its own
        _POOL = (workers, os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix=_POOL_PREFIX))
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return function(item)

    return list(_POOL[2].map(run, items))


BLOCK_PIXELS = 1 << 16
"""Target pixels (rows × targets × H × W) :func:`warp_image_depth` warps at once; a larger batch
goes a block of rows at a time. Measured on 2 CPU cores (the shipped model, 16 targets of 64 × 64
a row, one row a block): a batch of 8 rows splatted at once ran each call 40× slower than one
row, not 8×, as its intermediates (tens of MB) left the cache."""


def splat_depth(source_depth: torch.Tensor, source_c2w: torch.Tensor, target_c2w: torch.Tensor,
                intrinsics: torch.Tensor, supersample: int = 2, fill_cracks: int = 1) -> torch.Tensor:
    """The depth map each target camera sees of the source frame's surface → (B, N, H, W) float32.

    source_depth (B, H, W): the source frame's z-depth (``inf`` or large for the sky); poses
    and intrinsics as in :func:`warp_image`. Every source pixel, ``supersample``² points a
    pixel so that a surface magnified up to that factor leaves no cracks, is lifted to 3-D and
    projected into each target camera; the nearest point wins (a z-buffer). Target pixels no
    point lands on are ``inf``; cracks of one pixel inside a surface (an empty pixel between
    covered ones) are closed with the nearest neighbour's depth, ``fill_cracks`` times; a wider
    hole stays open: it is what the source frame never saw, or what its foreground hid.
    Why 2: measured on the shipped model's held-out paths (room and gallery, 16 chunks, memory
    sharpening), seen-pixel PSNR with 2 was within 0.2 dB of 3's on every path, in 4/9 of the
    points; 1 with two crack passes lost up to 6 dB (zigzags, where cracks are wider than 2 px).
    The points are projected in float32 after composing the poses in float64: a point's place
    moves by far less than a pixel, and a batched env step runs several times faster.
    """
    batch, height, width = source_depth.shape
    num_targets = target_c2w.shape[1]
    device = source_depth.device
    s = supersample
    depth = source_depth.float().nan_to_num(posinf=FAR_DEPTH).clamp(max=FAR_DEPTH)
    depth = depth.repeat_interleave(s, 1).repeat_interleave(s, 2)  # nearest: no depth mixed across an edge
    projection = _projection(intrinsics.to(device), source_c2w.to(device), target_c2w, height, width)
    col, row, z = (x.flatten(2) for x in _project_depth(depth[:, None], intrinsics, projection))  # (B, N, s²HW)
    col, row = torch.floor(col), torch.floor(row)
    lands = (z > 1e-6) & (col >= 0) & (col < width) & (row >= 0) & (row < height)  # NaN compares False
    index = torch.where(lands, row * width + col, height * width).long()  # the last slot: nowhere
    target = torch.full((batch, num_targets, height * width + 1), math.inf, device=device)
    target.scatter_reduce_(2, index, torch.where(lands, z, math.inf), reduce="amin")
    target = target[..., :-1].reshape(batch, num_targets, height, width)
    for _ in range(fill_cracks):
        # a crack is an empty pixel between covered ones (left and right, or above and below);
        # the edge of a wide hole has covered pixels on one side only and stays open
        flat = target.flatten(0, 1)[:, None]  # (B·N, 1, H, W)
        padded = F.pad(flat, (1, 1, 1, 1), value=math.inf)
        left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
        up, down = padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]
        finite = [torch.isfinite(x) for x in (left, right, up, down)]
        crack = torch.isinf(flat) & ((finite[0] & finite[1]) | (finite[2] & finite[3]))
        nearest = torch.stack([left, right, up, down]).amin(0)
        target = torch.where(crack, nearest, flat)[:, 0].reshape(target.shape)
    return target


def warp_image_depth(image: torch.Tensor, source_depth: torch.Tensor, source_c2w: torch.Tensor,
                     target_c2w: torch.Tensor, intrinsics: torch.Tensor, fill: str = "border",
                     with_validity: bool = False, fill_depth: float | None = 2.0, *,
                     plane_fill: bool = True) -> torch.Tensor:
    """Reproject ``image`` (B, C, H, W) into the cameras ``target_c2w`` (B, N, 4, 4) through the
    source frame's own depth ``source_depth`` (B, H, W) → (B, C or C + 1, N, H, W), as
    :func:`warp_image` but with per-pixel depth instead of one plane.

    The source surface is splatted into each target camera (:func:`splat_depth`); each target
    pixel it covers takes the source colour where its point lands (bilinear), so the colours
    stay as sharp as :func:`warp_image`'s. Pixels it does not cover (out of the source view, or
    behind a foreground object the camera moved past) are what the source never saw: they take
    the plane warp's colour at ``fill_depth`` (its border streak, or zero with ``fill="blank"``)
    and validity 0. Validity is 1 on covered pixels. ``plane_fill=False`` leaves them zero
    instead (a caller that multiplies by validity anyway saves the plane warp).
    """
    if fill not in WARP_FILLS:
        raise ValueError(f"warp fill must be one of {WARP_FILLS}, got {fill!r}")
    batch, channels, height, width = image.shape
    num_targets = target_c2w.shape[1]
    if source_depth.shape != (batch, height, width):
        raise ValueError(f"source_depth must be (B, H, W) = ({batch}, {height}, {width}), got "
                         f"{tuple(source_depth.shape)}")
    if torch.isnan(source_depth).any() or (source_depth <= 0).any():
        raise ValueError("source_depth must be positive (inf for the sky), got NaN or values <= 0")
    rows = max(1, BLOCK_PIXELS // (num_targets * height * width))
    if batch > rows:  # a block at a time: the splat's intermediates stay in the CPU's cache
        def block(i):
            return warp_image_depth(image[i:i + rows], source_depth[i:i + rows], source_c2w[i:i + rows],
                                    target_c2w[i:i + rows], intrinsics[i:i + rows], fill, with_validity, fill_depth,
                                    plane_fill=plane_fill)
        return torch.cat(parallel_map(block, range(0, batch, rows)))
    plane = warp_image(image, source_c2w, target_c2w, intrinsics, fill_depth, fill, with_validity=False) \
        if plane_fill else 0.0
    device = image.device
    target_depth = splat_depth(source_depth, source_c2w, target_c2w, intrinsics)  # (B, N, H, W)
    covered = torch.isfinite(target_depth)
    # each target camera's points back into the source camera, in normalised image units; an
    # uncovered pixel's point may fall behind it: its colour is not used, its grid kept finite
    per_target = intrinsics.to(device).repeat_interleave(num_targets, 0)  # (B·N, 4)
    to_source = _projection(per_target, target_c2w.flatten(0, 1),
                            source_c2w.to(device)[:, None].expand(-1, num_targets, -1, -1).flatten(0, 1)[:, None],
                            height=1, width=1)
    col, row, _ = _project_depth(target_depth.nan_to_num(posinf=1.0).flatten(0, 1)[:, None], per_target, to_source)
    grid = torch.stack([2 * col - 1, 2 * row - 1], dim=-1).nan_to_num(2.0).clamp(-2, 2)
    grid = grid.reshape(batch * num_targets, height, width, 2)
    source = image[:, None].expand(-1, num_targets, -1, -1, -1).reshape(batch * num_targets, channels, height, width)
    sampled = F.grid_sample(source, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.reshape(batch, num_targets, channels, height, width).transpose(1, 2)
    mask = covered[:, None].to(image.dtype)  # (B, 1, N, H, W)
    warped = sampled * mask + plane * (1 - mask)
    return torch.cat([warped, mask], dim=1) if with_validity else warped


def fill_views(fill_net, warped: torch.Tensor, target_c2w: torch.Tensor, intrinsics: torch.Tensor,
               depth: float | None, depth_net=None) -> torch.Tensor:
    """What one frame's warp into N cameras never saw, drawn once and seen from every camera.

    warped (R, 4, N, H, W): border-fill colours (not premultiplied) and validity of one source
    frame warped into the cameras ``target_c2w`` (R, N, 4, 4), intrinsics (R, 4). The fill net
    (:class:`~minwm_env.fill.FillNet`) draws the never-seen pixels of the last camera's frame,
    the widest new view of a chunk; that frame is warped into the other cameras (through
    ``depth_net``'s depth of it, else the plane at ``depth``, border fill) and fills their
    never-seen pixels: validity · colour + (1 − validity) · that warp. So what is drawn is drawn
    once and moves with the camera inside a chunk instead of being drawn anew in every frame
    (one net call per row, not N). Validity is returned unchanged → (R, 4, N, H, W).
    """
    colours, validity = warped[:, :3], warped[:, 3:4]
    last = fill_net.fill(colours[:, :, -1:], validity[:, :, -1:])  # (R, 3, 1, H, W)
    earlier = validity[:, :, :-1]
    if earlier.shape[2] == 0 or bool((earlier >= 1).all()):  # nothing else to fill
        return torch.cat([torch.cat([colours[:, :, :-1], last], dim=2), validity], dim=1)
    image = last[:, :, 0].float()
    source_c2w, targets = target_c2w[:, -1], target_c2w[:, :-1]
    if depth_net is None:
        seen_from_last = warp_image(image, source_c2w, targets, intrinsics, depth, "border")
    else:
        seen_from_last = warp_image_depth(image, depth_net.depth(image), source_c2w, targets, intrinsics, "border",
                                          fill_depth=depth)
    seen_from_last = seen_from_last.to(colours.dtype)
    filled = earlier * colours[:, :, :-1] + (1 - earlier) * seen_from_last
    return torch.cat([torch.cat([filled, last], dim=2), validity], dim=1)


def warped_reference(codec, reference: torch.Tensor, reference_c2w: torch.Tensor, previous_c2w: torch.Tensor,
                     c2w: torch.Tensor, intrinsics: torch.Tensor, depth: float | None = None,
                     fill: str = "border", validity: bool = False, memory=None, memory_k: int = 0,
                     depth_net=None, generation: torch.Tensor | None = None,
                     sharpen_distance: float = math.inf, reference_depth: torch.Tensor | None = None,
                     fill_net=None):
    """The residual reference of F latent frames: the last RGB frame of ``reference`` warped
    into every RGB frame of each latent frame, packed back into latents.

    reference (B, C, 1 or F, h, w): each frame's clean reference latent; reference_c2w (B, 1 or
    F, 4, 4) the pose of its last RGB frame; previous_c2w and c2w (B, F, 4, 4) the poses of the
    latent frame before each frame and of the frame; intrinsics (B, F, 4) → (B, C, F, h, w).
    ``fill`` decides what the reference never saw becomes (its border pixels or zero, mid-grey);
    with ``validity`` every pixel's validity, packed like the colours, follows them:
    (B, C + C / 3, F, h, w). A :class:`~minwm_env.memory.ViewMemory` (one reference per row,
    as streaming has) fills what the reference never saw from up to ``memory_k`` stored frames
    before packing (docs/design.md §6). A ``depth_net`` (:class:`~minwm_env.depth.DepthNet`)
    predicts each reference frame's depth, and the warp reprojects through it
    (:func:`warp_image_depth`) instead of the plane at ``depth``, which then only fills what the
    reference never saw.

    ``generation`` (B, 1, H, W), with a memory: how many resamplings each pixel of the
    reference's last RGB frame has been through. It is warped with the colours (plus one), the
    memory sharpens with it (:meth:`~minwm_env.memory.ViewMemory.composite`, stored frames
    within ``sharpen_distance``), and the call returns ``(reference, (generation, validity))``,
    the filled warp's per-pixel generation and validity (B, 1, F·T, H, W) in RGB frames.
    ``reference_depth`` (B, H, W): ``depth_net``'s depth of the reference's last RGB frame,
    when the caller has it already (one reference frame per row). A ``fill_net``
    (:class:`~minwm_env.fill.FillNet`) draws what is still never seen after the memory, once per
    reference frame (:func:`fill_views`, docs/design.md §6); the validity stays that of the warp
    (and memory).
    """
    batch, _, num_refs = reference.shape[:3]
    num_frames = c2w.shape[1]
    if num_refs not in (1, num_frames) or reference_c2w.shape[1] != num_refs:
        raise ValueError(f"need 1 or {num_frames} reference frames with one pose each, got {num_refs} frames "
                         f"and poses of shape {tuple(reference_c2w.shape)}")
    factor = codec.temporal_factor
    images = codec.unpack(reference)[:, :, factor - 1::factor]  # (B, 3, refs, H, W): each one's last RGB frame
    targets = rgb_frame_poses(previous_c2w, c2w, factor)  # (B, F, T, 4, 4)
    use_memory = memory is not None and memory_k > 0
    if use_memory and num_refs != 1:
        raise ValueError("a view memory fills the warp of one reference frame per row (streaming), got "
                         f"{num_refs} reference frames")
    if generation is not None and not use_memory:
        raise ValueError("generation is what a view memory sharpens by: pass a memory and memory_k > 0")
    def warp(image, source_c2w, target_c2w, k, with_validity, own=None):
        if depth_net is None:
            return warp_image(image, source_c2w, target_c2w, k, depth, fill, with_validity)
        if own is None:
            own = depth_net.depth(image[:, :3])
        return warp_image_depth(image, own, source_c2w, target_c2w, k, fill, with_validity, fill_depth=depth)

    generations = None
    if num_refs == 1:
        image = images[:, :, 0]
        if generation is not None:
            if tuple(generation.shape) != (batch, 1, *image.shape[2:]):
                raise ValueError(f"generation must have shape (B, 1, H, W) = ({batch}, 1, {image.shape[2]}, "
                                 f"{image.shape[3]}), got {tuple(generation.shape)}")
            image = torch.cat([image, generation.to(image.device, image.dtype)], dim=1)
        row_targets = targets.flatten(1, 2)  # (B, F·T, 4, 4): every RGB frame of the chunk
        warped = warp(image, reference_c2w[:, 0], row_targets, intrinsics[:, 0],
                      validity or use_memory or fill_net is not None, reference_depth)
        if generation is not None:  # split the generation channel off; the warp is one more resampling
            warped_generation = warped[:, 3:4] + 1
            warped = torch.cat([warped[:, :3], warped[:, 4:]], dim=1)
        if use_memory:
            filled = memory.composite(warped[:, :3], warped[:, 3:], row_targets, intrinsics[:, 0], depth,
                                      memory_k, fill=fill, depth_net=depth_net,
                                      generation=None if generation is None else warped_generation,
                                      sharpen_distance=sharpen_distance)
            if generation is not None:
                generations = (filled.generation, filled.validity)
            warped = torch.cat([filled.colours, filled.validity], dim=1)
        if fill_net is not None:
            warped = fill_views(fill_net, warped, row_targets, intrinsics[:, 0], depth, depth_net)
    else:  # one reference per frame: fold the frames into the batch
        rows = batch * num_frames
        warped = warp(images.transpose(1, 2).reshape(rows, *images.shape[1:2], *images.shape[3:]),
                      reference_c2w.reshape(rows, 4, 4), targets.reshape(rows, factor, 4, 4),
                      intrinsics.reshape(rows, 4), validity or fill_net is not None)  # (B·F, 3 or 4, T, H, W)
        if fill_net is not None:
            warped = fill_views(fill_net, warped, targets.reshape(rows, factor, 4, 4), intrinsics.reshape(rows, 4),
                                depth, depth_net)
        warped = warped.reshape(batch, num_frames, *warped.shape[1:]).transpose(1, 2).flatten(2, 3)
    colours = codec.pack(warped[:, :3].to(reference.dtype)).to(reference.dtype)
    if validity:
        packed = codec.pack(warped[:, 3:].to(reference.dtype)).to(reference.dtype) / codec.scale.to(reference.dtype)
        colours = torch.cat([colours, packed], dim=1)
    return colours if generations is None else (colours, generations)


def warp_along_actions(image: torch.Tensor, actions: torch.Tensor, intrinsics: torch.Tensor, temporal_factor: int,
                       depth: float | None = None) -> torch.Tensor:
    """A geometric baseline: ``image`` (3, H, W) reprojected into the camera of every RGB frame
    that the camera-delta ``actions`` (N, 6), one per latent frame, lead to from it → (3, N·T, H, W).
    No model: what the start frame alone predicts once the commanded motion is undone."""
    latent_c2w = camera.compose_deltas(actions.double())  # (N + 1, 4, 4), the start first
    poses = rgb_frame_poses(latent_c2w[:-1], latent_c2w[1:], temporal_factor).reshape(-1, 4, 4)
    warped = warp_image(image[None].float(), latent_c2w[None, 0], poses[None], intrinsics.reshape(1, 4), depth)
    return warped[0]
