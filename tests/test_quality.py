"""Quality measures (issue 17) on real 64x64 renders: each must score the truth perfectly and tell
a blurred, blocky or shrunken frame from it, and block artefacts must not buy detail."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minwm_env.eval import metrics, quality
from minwm_env.world.renderer import WorldRenderer, look_pose
from minwm_env.world.scenes import make_scene

CELL = quality.CELL


@pytest.fixture(scope="module")
def scene():
    return make_scene("room", 100)


@pytest.fixture(scope="module")
def room(scene):
    renderer = WorldRenderer(scene, 64, 64)
    yield renderer
    renderer.close()


@pytest.fixture(scope="module")
def views(room):
    """Five level views from the middle of the room and around it."""
    poses = [look_pose(x, y, 0.5, yaw, pitch) for x, y, yaw, pitch in
             ((0, 0, 0, 0), (0, 0, 60, 0), (0.3, -0.2, 120, 5), (0, 0, 200, -10), (0.2, 0.1, 290, 0))]
    return np.stack([room.render(pose) for pose in poses])


def cell_offsets(frames, amplitude, seed=0):
    """Block artefacts: one random brightness offset per 4x4 cell (what a space-to-depth latent
    with per-latent-pixel errors decodes to)."""
    num_frames, height, width, _ = frames.shape
    offsets = np.random.default_rng(seed).normal(0, amplitude, (num_frames, height // CELL, width // CELL, 1))
    offsets = np.repeat(np.repeat(offsets, CELL, axis=1), CELL, axis=2)
    return np.clip(np.round(frames + offsets), 0, 255).astype(np.uint8)


def cell_means(frames):
    """Each 4x4 cell replaced by its mean colour (average-pool, nearest upsample)."""
    num_frames, height, width, _ = frames.shape
    cells = frames.astype(np.float64).reshape(num_frames, height // CELL, CELL, width // CELL, CELL, 3)
    cells = cells.mean(axis=(2, 4))
    return np.round(np.repeat(np.repeat(cells, CELL, axis=1), CELL, axis=2)).astype(np.uint8)


def pixel_noise(frames, amplitude, seed=1):
    noise = np.random.default_rng(seed).normal(0, amplitude, frames.shape)
    return np.clip(np.round(frames + noise), 0, 255).astype(np.uint8)


# --- detail -------------------------------------------------------------------------------------


def test_detail_ratio_is_one_for_the_truth_and_falls_with_blur(views):
    np.testing.assert_allclose(quality.detail_ratio(views, views), 1.0, atol=1e-12)
    sharp = quality.detail_ratio(quality.gaussian_blur(views, 0.5), views)
    blur1 = quality.detail_ratio(quality.gaussian_blur(views, 1.0), views)
    blur2 = quality.detail_ratio(quality.gaussian_blur(views, 2.0), views)
    assert (blur1 < 0.7).all() and (blur2 < 0.45).all()  # measured: 0.53-0.59 and 0.31-0.39
    assert (blur2 < blur1).all() and (blur1 < sharp).all() and (sharp < 1).all()
    # over-sharpening (unsharp mask) is more detail than the truth's
    sharpened = np.clip(2.0 * views - quality.gaussian_blur(views, 1.0), 0, 255).astype(np.uint8)
    assert (quality.detail_ratio(sharpened, views) > 1.2).all()


def test_block_artefacts_do_not_buy_detail(views):
    blurred = quality.gaussian_blur(views, 1.0)
    blur = quality.detail_ratio(blurred, views)
    blocky = cell_offsets(blurred, 8.0)
    pooled = cell_offsets(cell_means(blurred), 6.0)
    assert (quality.detail_ratio(blocky, views) <= blur + 1e-9).all()  # the steps lie on cell boundaries
    assert (quality.detail_ratio(pooled, views) <= blur).all()
    assert (quality.detail_ratio(cell_means(views), views) < 0.05).all()  # constant cells: no detail at all
    # why only differences inside cells count: with every pair counted (cell=None) the steps
    # between cells of a pooled frame look like detail, and in the plain gradient energy so do
    # the per-cell offsets
    every_pair = quality.detail_ratio(pooled, views, cell=None)
    assert (every_pair > quality.detail_ratio(blurred, views, cell=None) + 0.1).all()

    def gradient_energy(frames):
        x = frames.astype(np.float64)
        return (np.diff(x, axis=1) ** 2).mean(axis=(1, 2, 3)) + (np.diff(x, axis=2) ** 2).mean(axis=(1, 2, 3))

    assert (gradient_energy(blocky) > gradient_energy(blurred)).all()


def test_detail_ratio_forgives_a_shift_and_ignores_pixel_noise(views):
    # the same view one pixel to the side: as sharp as the truth, not aligned with it
    shifted = quality.detail_ratio(views[:, :, 1:], views[:, :, :-1])
    blur1 = quality.detail_ratio(quality.gaussian_blur(views, 1.0), views)
    assert shifted.mean() > 0.9 and (shifted > blur1 + 0.15).all()
    # noise raises local gradient energy everywhere alike; where the truth is detailed decides
    noisy = quality.detail_ratio(pixel_noise(views, 8.0), views)
    assert np.abs(noisy - 1).max() < 0.1
    assert (quality.detail_ratio(pixel_noise(quality.gaussian_blur(views, 1.0), 8.0), views) < blur1 + 0.05).all()


def test_detail_ratio_of_a_plain_truth_is_nan_and_pooling_weighs_frames_by_detail(room, views):
    wall = room.render(look_pose(2.3, 0.5, 0.5, 0, 0))[None]  # nothing but a shaded wall
    assert quality.detail_map(wall).std() < quality.DETAIL_FLOOR < quality.detail_map(views).std(axis=(1, 2)).min()
    patchwork = cell_offsets(pixel_noise(wall, 3.0), 6.0)  # what the shipped model draws on plain walls
    assert np.isnan(quality.detail_ratio(patchwork, wall)).all()
    # why: on a plain truth the slope is noise (faint noise alone scores anywhere from 0 to 1.8)
    unfloored = [quality.detail_ratio(pixel_noise(wall, 3.0, seed), wall, floor=0)[0] for seed in range(4)]
    assert max(unfloored) - min(unfloored) > 0.5
    assert np.isnan(quality.detail_ratio(views[0], np.full((64, 64, 3), 128, np.uint8))).all()
    blurred = quality.gaussian_blur(views, 1.0)
    alone = quality.pooled_detail_ratio(blurred, views)
    assert alone == pytest.approx(0.56, abs=0.05)  # the pooled value sits among the frames' 0.53-0.59
    with_wall = quality.pooled_detail_ratio(np.concatenate([blurred, patchwork]), np.concatenate([views, wall]))
    assert with_wall == pytest.approx(alone, abs=0.01)
    assert quality.pooled_detail_ratio(views, views) == pytest.approx(1.0, abs=1e-12)


def test_detail_ratio_checks_its_arguments(views):
    assert quality.detail_ratio(views, views[0]).shape == (len(views),)  # one truth frame against many
    with pytest.raises(ValueError, match="same shape"):
        quality.detail_ratio(views[:, :32], views)
    with pytest.raises(TypeError, match="uint8"):
        quality.detail_ratio(views.astype(np.float32), views)
    with pytest.raises(ValueError, match="cell"):
        quality.detail_map(views, cell=1)


# --- blockiness ---------------------------------------------------------------------------------


def test_blockiness_is_about_one_for_renders_and_high_for_block_artefacts(views):
    truth = quality.blockiness(views)
    # a few long edges can land on the grid in one 64x64 frame; over frames it averages out
    assert (truth > 0.7).all() and (truth < 1.8).all() and 0.9 < truth.mean() < 1.2
    for sigma in (1.0, 2.0):
        blurred = quality.gaussian_blur(views, sigma)
        assert 0.9 < quality.blockiness(blurred).mean() < 1.2
        assert (quality.blockiness(cell_offsets(blurred, 8.0)) > 2.0).all()  # measured 3.0-5.2
        assert (quality.blockiness(cell_offsets(blurred, 3.0)) > 1.5).all()
    assert np.isinf(quality.blockiness(cell_means(views))).all()
    assert np.isnan(quality.blockiness(np.full((64, 64, 3), 7, np.uint8))).all()
    # the grid is a parameter: an image of 8x8 blocks is blocky on the 8-pixel grid
    assert np.isinf(quality.blockiness(np.repeat(np.repeat(views[:, ::8, ::8], 8, 1), 8, 2), cell=8)).all()


def test_blockiness_sees_the_grid_phase(views):
    blocky = cell_offsets(quality.gaussian_blur(views, 1.0), 8.0)
    # the same artefacts two pixels off the grid: half the steps fall inside cells
    off_grid = np.roll(blocky, 2, axis=(1, 2))
    assert (quality.blockiness(off_grid) < 0.5 * quality.blockiness(blocky)).all()


# --- blur baseline ------------------------------------------------------------------------------


def test_gaussian_blur_keeps_flat_frames_and_sigma_zero():
    flat = np.full((2, 16, 16, 3), 77, np.uint8)
    np.testing.assert_array_equal(quality.gaussian_blur(flat, 2.0), flat)
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(quality.gaussian_blur(frame, 0.0)[0], frame)
    assert quality.gaussian_blur(frame, 1.0).std() < frame.std() / 2
    with pytest.raises(ValueError, match="sigma"):
        quality.gaussian_blur(frame, -1.0)


def test_best_blur_finds_what_blur_buys_a_misaligned_baseline(room, views):
    fit = quality.best_blur(views, views)
    assert fit.sigma == 0.0 and fit.psnr_db == metrics.PSNR_CAP_DB
    # a baseline that is sharp but a little off (the camera turned 3 degrees): blurring it scores better
    baseline = np.stack([room.render(look_pose(0, 0, 0.5, 3, 0)), room.render(look_pose(0, 0, 0.5, 63, 0))])
    fit = quality.best_blur(baseline, views[:2])
    assert fit.sigma > 0 and fit.psnr_db > fit.psnr_db_by_sigma[0.0] + 0.5
    assert set(fit.psnr_db_by_sigma) == set(quality.BLUR_SIGMAS)
    assert fit.psnr_db == max(fit.psnr_db_by_sigma.values())
    np.testing.assert_array_equal(fit.frames, quality.gaussian_blur(baseline, fit.sigma))
    # and the blurred baseline has lost detail it had
    assert quality.detail_ratio(fit.frames, views[:2]).max() < quality.detail_ratio(baseline, views[:2]).min()


# --- seen and new content -----------------------------------------------------------------------


def _pair(room, start, later):
    return room.render(start), room.render_depth(start), room.render(later), room.render_depth(later)


def test_the_same_pose_sees_everything_and_scores_the_cap(room):
    pose = look_pose(0, 0, 0.5, 30, 0)
    image, depth, _, _ = _pair(room, pose, pose)
    seen = quality.seen_mask(pose, depth, pose, room.intrinsics, depth)
    assert seen.all()
    warped = quality.warp_with_depth(image, pose, pose, room.intrinsics, depth)
    np.testing.assert_array_equal(warped, image)
    assert metrics.capped(quality.masked_psnr(warped, image, seen)) == metrics.PSNR_CAP_DB
    assert quality.masked_ssim(warped, image, seen)[0] == 1.0


def test_a_30_degree_turn_reveals_the_half_it_turns_to(room):
    start, later = look_pose(0, 0, 0.5, 0, 0), look_pose(0, 0, 0.5, -30, 0)  # yaw -30: a turn to the right
    image, start_depth, truth, depth = _pair(room, start, later)
    seen = quality.seen_mask(start, start_depth, later, room.intrinsics, depth)
    # the horizontal field of view is 60 degrees: columns right of the centre are new, exactly
    assert not seen[:, 32:].any()
    assert seen[:, :32].mean() > 0.9  # less a few pixels on depth edges and the keystoned bottom corner
    # a rotation moves pixels independently of depth
    where, deeper = (quality.reproject(start, later, room.intrinsics, d) for d in (depth, 2 * depth))
    np.testing.assert_allclose(where.u, deeper.u, atol=1e-9)
    np.testing.assert_allclose(where.v, deeper.v, atol=1e-9)
    warped = quality.warp_with_depth(image, start, later, room.intrinsics, depth)
    # measured 23.4 dB against 14.4 dB unwarped (the headlight turns with the camera, so shading changes)
    assert quality.masked_psnr(warped, truth, seen)[0] > quality.masked_psnr(image, truth, seen)[0] + 6


def test_seen_pixels_reproject_exactly_and_occluded_ones_do_not(scene, room):
    # facing an object, then a step to the side: the wall behind it is partly uncovered
    target = scene.obstacles[0]
    yaw = math.degrees(math.atan2(target.y, target.x))
    right = np.array([math.sin(math.radians(yaw)), -math.cos(math.radians(yaw))])
    start, later = look_pose(0, 0, 0.5, yaw, 0), look_pose(*(0.3 * right), 0.5, yaw, 0)
    image, start_depth, truth, depth = _pair(room, start, later)
    seen = quality.seen_mask(start, start_depth, later, room.intrinsics, depth)
    occluded = quality.reproject(start, later, room.intrinsics, depth).inside & ~seen
    assert 0.7 < seen.mean() < 0.95 and occluded.sum() > 50
    warped = quality.warp_with_depth(image, start, later, room.intrinsics, depth)
    seen_psnr = quality.masked_psnr(warped, truth, seen)[0]
    assert seen_psnr > 30  # measured 35.0 dB (headlight shading and resampling are the rest)
    assert quality.masked_psnr(warped, truth, occluded)[0] < seen_psnr - 15  # measured 12.4 dB
    assert quality.masked_ssim(warped, truth, seen)[0] > 0.85
    assert quality.masked_psnr(image, truth, seen)[0] < seen_psnr - 10  # the unwarped start frame
    # several later frames at once give the same masks
    poses, depths = np.stack([later, start]), np.stack([depth, start_depth])
    both = quality.seen_mask(start, start_depth, poses, room.intrinsics, depths)
    np.testing.assert_array_equal(both[0], seen)
    assert both[1].all()


def test_masked_scores_agree_with_the_full_ones_and_are_nan_on_empty_masks(views):
    other = quality.gaussian_blur(views, 1.0)
    everything = np.ones((64, 64), dtype=bool)
    np.testing.assert_allclose(quality.masked_psnr(other, views, everything), metrics.psnr(other, views), rtol=1e-12)
    np.testing.assert_allclose(quality.ssim_map(other, views).mean(axis=(1, 2)), metrics.ssim(other, views), rtol=1e-12)
    np.testing.assert_allclose(quality.masked_ssim(other, views, everything), metrics.ssim(other, views), rtol=1e-12)
    assert np.isnan(quality.masked_psnr(other, views, ~everything)).all()
    assert np.isnan(quality.masked_ssim(other, views, ~everything)).all()
    border = np.zeros((64, 64), dtype=bool)
    border[:, :3] = True  # no whole SSIM window is centred there
    assert np.isnan(quality.masked_ssim(other, views, border)).all()
    # damage one half: the masks tell the halves apart
    damaged = views.copy()
    damaged[:, :, 32:] = quality.gaussian_blur(views, 2.0)[:, :, 32:]
    left = np.zeros((64, 64), dtype=bool)
    left[:, :32] = True
    assert np.isinf(quality.masked_psnr(damaged, views, left)).all()
    assert (quality.masked_psnr(damaged, views, ~left) < 35).all()
    per_frame_left = np.repeat(left[None], len(views), axis=0)  # a (T, H, W) mask works too
    assert (quality.masked_ssim(damaged, views, ~left) < quality.masked_ssim(damaged, views, per_frame_left)).all()
    with pytest.raises(TypeError, match="boolean"):
        quality.masked_psnr(other, views, everything.astype(np.uint8))


# --- object scale -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def approach(scene, room):
    """Walking head-on at a cylinder, from 2.4 to 1.0 units of its centre: frames and geom ids."""
    target = scene.obstacles[5]
    distance = math.hypot(target.x, target.y)
    yaw = math.degrees(math.atan2(target.y, target.x))
    poses = [look_pose(target.x * (1 - d / distance), target.y * (1 - d / distance), 0.5, yaw, 0)
             for d in (2.4, 2.0, 1.6, 1.3, 1.0)]
    frames = np.stack([room.render(pose) for pose in poses])
    geom = np.stack([room.render_labels(pose)[1] for pose in poses])
    return frames, geom, int(geom[-1, 32, 32])


def shrink_about(frame, scale, centre):
    """The frame zoomed out by ``scale`` about the pixel position ``centre`` (row, col)."""
    height, width = frame.shape[:2]
    rows, cols = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    source_cols = centre[1] + (cols - centre[1]) / scale
    source_rows = centre[0] + (rows - centre[0]) / scale
    grid = torch.from_numpy(np.stack([2 * source_cols / width - 1, 2 * source_rows / height - 1], axis=-1))[None]
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].double()
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def test_object_area_ratio_is_one_for_the_truth_and_sees_a_farther_object(approach):
    frames, geom, target = approach
    area = (geom == target).sum(axis=(1, 2))
    assert (np.diff(area) > 0).all()
    np.testing.assert_allclose(quality.object_area_ratio(frames, frames, geom, target), 1.0, atol=0.03)
    # a model that draws the object as it looks one step farther back: too small by the truth's own ratio
    measured = quality.object_area_ratio(frames[:-1], frames[1:], geom[1:], target)
    np.testing.assert_allclose(measured, area[:-1] / area[1:], atol=0.05)
    assert (measured < 0.75).all()


def test_object_area_ratio_of_a_frame_shrunk_about_the_object(approach):
    frames, geom, target = approach
    rows, cols = np.nonzero(geom[1] == target)
    centre = ((rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2)
    for scale in (0.9, 0.8, 0.7):
        ratio = quality.object_area_ratio(shrink_about(frames[1], scale, centre), frames[1], geom[1], target)[0]
        assert ratio == pytest.approx(scale ** 2, abs=0.07)  # measured 0.84, 0.70, 0.53


def test_object_area_ratio_under_blur_blocks_and_absence(approach):
    frames, geom, target = approach
    # blur keeps the object about its size: mixed edge pixels count on the object's side of the
    # colour threshold (measured: +2..16% at sigma 1, +6..24% at sigma 2)
    for sigma, high in ((1.0, 1.2), (2.0, 1.3)):
        ratio = quality.object_area_ratio(quality.gaussian_blur(frames, sigma), frames, geom, target)
        assert (ratio > 0.95).all() and (ratio < high).all()
    blocky = cell_offsets(quality.gaussian_blur(frames, 1.0), 8.0)
    assert np.abs(quality.object_area_ratio(blocky, frames, geom, target) - 1).max() < 0.2
    # only what touches the object's place counts: a patch of its colour elsewhere does not
    elsewhere = frames.copy()
    colour = frames[0][geom[0] == target].mean(axis=0).round().astype(np.uint8)
    rows, cols = np.nonzero((geom == target).any(axis=0))
    far_col = 0 if cols.min() > 16 else 56
    elsewhere[:, 2:10, far_col:far_col + 8] = colour
    np.testing.assert_array_equal(quality.object_area_ratio(elsewhere, frames, geom, target),
                                  quality.object_area_ratio(frames, frames, geom, target))
    # an object that is not drawn at all has no area; frames where the truth lacks it give NaN
    empty = np.broadcast_to(frames[0, :1, :1], frames.shape).copy()  # the top-left colour everywhere
    assert (quality.object_area_ratio(empty, frames, geom, target) == 0).all()
    no_object = geom.copy()
    no_object[2] = -1
    assert np.isnan(quality.object_area_ratio(frames, frames, no_object, target)[2])
    with pytest.raises(ValueError, match="not visible in the first"):
        quality.object_area_ratio(frames, frames, np.full_like(geom, -1), target)
