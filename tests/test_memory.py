"""Spatial memory (minwm_env/memory.py): looking away and back restores what was seen, the store
stays bounded and spread over the places visited, rows are independent, bad input is refused."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from minwm_env import camera
from minwm_env.codec import from_uint8
from minwm_env.memory import ViewMemory, pose_distance
from minwm_env.warp import warp_image
from minwm_env.world.renderer import WorldRenderer, look_pose
from minwm_env.world.scenes import make_scene

SIZE = 64
DEPTH = 2.0  # the shipped models' warp_depth
INTRINSICS = (0.8660254037844386, 0.8660254037844386, 0.5, 0.5)  # the renderer's 60° field of view


@pytest.fixture(autouse=True)
def _one_thread():
    """The store's tensors are small: one thread is faster, and keeps a shared machine's other work going."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def room():
    renderer = WorldRenderer(make_scene("room", 3), SIZE, SIZE)
    yield renderer
    renderer.close()


def _turn(yaw: float) -> torch.Tensor:
    return camera.delta_to_matrix(torch.tensor([0.0, 0, 0, yaw, 0, 0]))


def _pose(x: float, y: float, yaw: float) -> torch.Tensor:
    return torch.from_numpy(look_pose(x, y, 1.0, yaw))


def _render(room, pose: torch.Tensor) -> torch.Tensor:
    return from_uint8(torch.from_numpy(room.render(pose.numpy()))).float()  # (3, H, W)


def _intrinsics(batch: int) -> torch.Tensor:
    return torch.tensor(INTRINSICS, dtype=torch.float64).expand(batch, 4)


def _walk(num_poses: int) -> torch.Tensor:
    """(num_poses, 4, 4) a figure-of-eight walk through the room, turning ten times around (a step
    of over 3.6°, above the duplicate distance)."""
    turns = [2 * math.pi * i / num_poses for i in range(num_poses)]
    return torch.stack([_pose(2 * math.sin(s), 1.5 * math.sin(2 * s), math.degrees(10 * s) % 360) for s in turns])


def _state(memory: ViewMemory) -> list[torch.Tensor]:
    return [t.clone() for t in (memory.frames, memory.c2w, memory.places, memory.occupied, memory.added_at,
                                memory.num_added, memory.depths, memory.has_depth, memory.generations)]


@pytest.mark.parametrize("fill", ["border", "blank"])
def test_looking_away_and_back_restores_the_seen_view(room, fill):
    """Store the view at P and a turn away from it (4 × 12°); turned back to near P, the last
    frame's warp misses most of the image, and the memory fills it with what P saw."""
    start = _pose(0.0, 0.0, 30.0)
    poses = [start @ _turn(12.0 * i) for i in range(5)]
    memory = ViewMemory(1, 8, SIZE, SIZE)
    for pose in poses:
        memory.add(_render(room, pose)[None], pose[None])
    targets = torch.stack([start @ _turn(6.0), start @ _turn(2.0)])[None]  # (1, 2, 4, 4) back near P
    warped = warp_image(_render(room, poses[-1])[None], poses[-1][None], targets, _intrinsics(1), DEPTH, fill,
                        with_validity=True)
    colours, validity = warped[:, :3], warped[:, 3:]
    truth = torch.stack([_render(room, pose) for pose in targets[0]], dim=1)[None]  # (1, 3, 2, H, W)

    filled = memory.composite(colours, validity, targets, _intrinsics(1), DEPTH, 4, fill=fill)
    found = memory.retrieve(targets, _intrinsics(1), 4, DEPTH, gaps=validity[:, 0] < memory.valid_threshold)
    assert found.indices[0, 0] == 0 and 4 not in found.indices  # P first; the last frame cannot fill its own gaps

    assert float((validity < 0.999).float().mean()) > 0.6  # the last frame saw under 40% of it
    assert float((filled.validity > 0.99).float().mean()) > 0.99
    error_last = float((colours - truth).abs().mean())
    error_memory = float((filled.colours - truth).abs().mean())
    # measured: 0.038 against 0.28 (border) and 0.38 (blank); rotation-only, so only resampling remains
    assert error_memory < 0.06 and error_memory < 0.2 * error_last, (error_memory, error_last)
    seen = validity >= memory.valid_threshold
    assert torch.equal(filled.colours[seen.expand_as(colours)], colours[seen.expand_as(colours)])
    assert torch.equal(filled.validity[seen], validity[seen])


def test_a_long_walk_keeps_capacity_frames_spread_over_it():
    """1000 adds: exactly ``capacity`` frames in storage that never grows, the newest
    ``num_recent`` all there, and the older half spread over the whole walk: a frame from every
    fifth of it, and every pose of the walk much nearer a stored one than to the last
    ``capacity`` frames (what evicting the oldest would keep)."""
    capacity = 32
    poses = _walk(1000)
    memory = ViewMemory(1, capacity, 8, 8)
    storage, nbytes = memory.frames.data_ptr(), memory.nbytes
    image = torch.zeros(1, 3, 8, 8)
    for pose in poses:
        memory.add(image, pose[None])
    assert int(memory.num_frames[0]) == capacity
    assert memory.frames.data_ptr() == storage and memory.nbytes == nbytes
    ages = memory.added_at[0].sort(descending=True).values
    assert ages[: memory.num_recent].tolist() == list(range(1000, 1000 - memory.num_recent, -1))
    assert {(int(age) - 1) // 200 for age in ages} == set(range(5))  # every fifth of the walk is represented
    stored = memory.c2w[0][memory.occupied[0]]
    cover = pose_distance(poses[:, None], stored[None], memory.translation_weight).amin(1).max()
    cover_last = pose_distance(poses[:, None], poses[None, -capacity:], memory.translation_weight).amin(1).max()
    assert cover < 0.5 * cover_last, (float(cover), float(cover_last))  # measured 2.1 against 4.6


def test_near_duplicate_poses_replace_each_other():
    """A pose within ``duplicate_distance`` of a stored place supersedes it (the newest frame
    wins, the place stays), so a slow turn keeps one frame every ~3° and does not collapse into one."""
    memory = ViewMemory(1, 64, 8, 8, duplicate_distance=0.05)
    start = _pose(0.0, 0.0, 0.0)
    for i, yaw in enumerate((0.0, 1.0, 2.0)):  # 0.017 and 0.035 rad from the first pose
        memory.add(torch.full((1, 3, 8, 8), float(i)), (start @ _turn(yaw))[None])
    assert int(memory.num_frames[0]) == 1
    slot = int(memory.occupied[0].nonzero()[0, 0])
    assert torch.equal(memory.frames[0, slot], torch.full((3, 8, 8), 2.0))
    torch.testing.assert_close(memory.c2w[0, slot], start @ _turn(2.0), atol=1e-12, rtol=0)
    torch.testing.assert_close(memory.places[0, slot], start, atol=1e-12, rtol=0)
    memory.add(torch.zeros(1, 3, 8, 8), (start @ _turn(4.0))[None])  # 0.07 rad from the place: a new one
    assert int(memory.num_frames[0]) == 2
    for yaw in range(5, 101):  # a slow turn in 1° steps
        memory.add(torch.zeros(1, 3, 8, 8), (start @ _turn(float(yaw)))[None])
    assert 30 <= int(memory.num_frames[0]) <= 36  # one place every 3° of the 100°


def test_retrieve_ranks_by_coverage_then_the_nearer_camera():
    """The camera at the target sees all of its rays; one stepped back sees them too (a near
    tie) and loses on distance; one facing away sees none and is never returned."""
    target = _pose(0.0, 0.0, 0.0)
    behind = target @ camera.delta_to_matrix(torch.tensor([0.0, 0, -0.5, 0, 0, 0]))
    away = target @ _turn(180.0)
    memory = ViewMemory(1, 4, 16, 16)
    for pose in (behind, away, target):  # the tie's loser first, so slot order cannot decide
        memory.add(torch.zeros(1, 3, 16, 16), pose[None])
    found = memory.retrieve(target[None, None], _intrinsics(1), 3, DEPTH)
    assert found.indices.tolist() == [[2, -1, -1]]
    assert found.scores.tolist() == [[1.0, 0.0, 0.0]]
    covered = memory.coverage(target[None, None], _intrinsics(1), DEPTH)  # (1, 4, 1, 64)
    assert covered[0, :, 0].sum(1).tolist() == [64, 0, 64, 0]
    assert memory.coverage(target[None, None], _intrinsics(1), None)[0, :, 0].sum(1).tolist() == [64, 0, 64, 0]
    # with gaps, the score is the share of the pixels a pick fills, and what it fills is no longer needed
    gaps = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    gaps[..., :3] = True  # the left 3 columns of 16
    found = memory.retrieve(target[None, None], _intrinsics(1), 2, DEPTH, gaps=gaps)
    assert found.indices.tolist() == [[2, -1]] and found.scores[0, 0] == pytest.approx(3 / 16)


@pytest.mark.parametrize("yaw", [3.3, 7.3, -11.7])
def test_the_last_frame_cannot_fill_its_own_gaps(yaw):
    """Stored, the frame a reference was warped from covers none of that reference's gaps, not
    even on the seam where its bilinear validity is fractional (a ray must land half a pixel
    inside a stored image, where its warp is fully valid)."""
    size = 16
    last_c2w = _pose(0.0, 0.0, 10.0)[None]
    targets = torch.stack([last_c2w[0] @ _turn(yaw), last_c2w[0] @ _turn(yaw / 2)])[None]
    validity = warp_image(torch.zeros(1, 3, size, size), last_c2w, targets, _intrinsics(1), DEPTH,
                          with_validity=True)[:, 3]
    gaps = validity < 0.999
    assert bool(((validity > 0.05) & gaps).any())  # a seam with fractional validity
    memory = ViewMemory(1, 2, size, size)
    memory.add(torch.zeros(1, 3, size, size), last_c2w)
    found = memory.retrieve(targets, _intrinsics(1), 2, DEPTH, gaps=gaps)
    assert found.indices.tolist() == [[-1, -1]]


def _composite_inputs(batch: int, num_targets: int, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    last = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    last_c2w = torch.stack([_pose(0.1 * b, 0.0, 40.0 + 10 * b) for b in range(batch)])
    targets = torch.stack([torch.stack([_pose(0.1 * b, 0.05 * n, 5.0 * n + 3 * b) for n in range(num_targets)])
                           for b in range(batch)])
    warped = warp_image(last, last_c2w, targets, _intrinsics(batch), DEPTH, "border", with_validity=True)
    return warped[:, :3], warped[:, 3:], targets


@pytest.mark.parametrize("fill", ["border", "blank"])
def test_composite_is_over_by_validity(fill):
    """One stored frame: the gaps take ``(A·c + (1 − A)·s) / (A + (1 − A)·v)`` (border: colours
    not premultiplied) or ``c + (1 − A)·s`` (blank: premultiplied), with s, v the stored frame's
    blank warp and validity; the seams of both warps are fractional, so each term counts."""
    size, generator = 16, torch.Generator().manual_seed(3)
    target = _pose(0.0, 0.0, 0.0)[None, None]  # (1, 1, 4, 4)
    last, last_c2w = torch.rand(1, 3, size, size, generator=generator) * 2 - 1, (target[0] @ _turn(25.0))
    stored, stored_c2w = torch.rand(1, 3, size, size, generator=generator) * 2 - 1, (target[0] @ _turn(-13.0))
    warped = warp_image(last, last_c2w, target, _intrinsics(1), DEPTH, fill, with_validity=True)
    colours, validity = warped[:, :3], warped[:, 3:]
    memory = ViewMemory(1, 2, size, size)
    memory.add(stored, stored_c2w)
    filled = memory.composite(colours, validity, target, _intrinsics(1), DEPTH, 1, fill=fill)

    from_memory = warp_image(stored, stored_c2w, target, _intrinsics(1), DEPTH, "blank", with_validity=True)
    s, v = from_memory[:, :3], from_memory[:, 3:]
    gap = validity < memory.valid_threshold
    alpha = validity + (1 - validity) * v
    if fill == "border":
        expected = (validity * colours + (1 - validity) * s) / alpha.clamp_min(1e-12)
    else:
        expected = colours + (1 - validity) * s
    added = gap & (v > 0)
    assert 0.1 < float(added.float().mean()) < 0.9 and bool(((v > 0.05) & (v < 0.95) & gap).any())
    torch.testing.assert_close(filled.colours, torch.where(added, expected, colours), atol=1e-5, rtol=0)
    torch.testing.assert_close(filled.validity, torch.where(added, alpha, validity), atol=1e-6, rtol=0)


def test_rows_are_independent():
    """A 2-row memory gives each row what a 1-row memory holding only that row's frames gives."""
    size, generator = 16, torch.Generator().manual_seed(0)
    both = ViewMemory(2, 6, size, size)
    alone = [ViewMemory(1, 6, size, size) for _ in range(2)]
    for step in range(12):
        frames = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
        c2w = torch.stack([_pose(0.1 * step, 0.0, -20.0 + 9 * step), _pose(0.0, -0.1 * step, 50.0 - 7 * step)])
        rows = [0, 1] if step % 3 else [1]  # row 0 misses every third add
        both.add(frames[rows], c2w[rows], rows=rows)
        for row in rows:
            alone[row].add(frames[row:row + 1], c2w[row:row + 1])
    colours, validity, targets = _composite_inputs(2, 3, size, seed=1)
    found = both.retrieve(targets, _intrinsics(2), 4, DEPTH)
    filled = both.composite(colours, validity, targets, _intrinsics(2), DEPTH, 4, fill="border")
    assert not torch.equal(filled.colours, colours)  # the memory did something
    for row in range(2):
        ours = alone[row].retrieve(targets[row:row + 1], _intrinsics(1), 4, DEPTH)
        assert torch.equal(found.indices[row], ours.indices[0])
        torch.testing.assert_close(found.scores[row], ours.scores[0], atol=1e-12, rtol=0)
        one = alone[row].composite(colours[row:row + 1], validity[row:row + 1], targets[row:row + 1],
                                   _intrinsics(1), DEPTH, 4, fill="border")
        torch.testing.assert_close(filled.colours[row], one.colours[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(filled.validity[row], one.validity[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("through_depth", [False, True])
def test_composite_in_blocks_of_rows_over_threads_equals_the_whole_batch(monkeypatch, through_depth):
    """A batch of more rows than a block composites a block of rows per thread: bit for bit what
    the whole batch in one block gives (colours, validity and, sharpening, generations), through
    the plane or through a depth net; the stored frames' depths are computed once either way."""
    from minwm_env import memory as memory_module

    size, rows, num_targets = 16, 3, 3
    generator = torch.Generator().manual_seed(5)
    calls = []

    def depth_net(frames):  # any positive depth that depends on the frame
        calls.append(len(frames))
        return 1.5 + frames.mean(1).abs()

    def run(block_pixels, threads):
        monkeypatch.setattr(memory_module, "BLOCK_PIXELS", block_pixels)
        memory = ViewMemory(rows, 6, size, size)
        g = torch.Generator().manual_seed(7)
        for step in range(5):
            frames = torch.rand(rows, 3, size, size, generator=g) * 2 - 1
            c2w = torch.stack([_pose(0.1 * step, 0.05 * b, -30.0 + 11 * step + 7 * b) for b in range(rows)])
            memory.add(frames, c2w, generations=torch.full((rows, size, size), float(step)))
        colours, validity, targets = _composite_inputs(rows, num_targets, size, seed=2)
        generation = torch.rand(validity.shape, generator=torch.Generator().manual_seed(3)) * 6
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return memory.composite(colours, validity, targets, _intrinsics(rows), DEPTH, 2, fill="border",
                                    depth_net=depth_net if through_depth else None, generation=generation,
                                    sharpen_distance=0.5), colours
        finally:
            torch.set_num_threads(before)

    whole, colours = run(1 << 30, 1)
    whole_calls = list(calls)
    calls.clear()
    blocked, _ = run(num_targets * size * size, 2)  # one row a block, two threads
    assert not torch.equal(whole.colours, colours)  # the memory did something
    for ours, theirs in zip(blocked, whole):
        assert torch.equal(ours, theirs)
    assert sum(calls) == sum(whole_calls)  # each stored frame's depth once, not once per block


def test_an_empty_memory_returns_the_inputs_unchanged():
    size = 16
    colours, validity, targets = _composite_inputs(2, 2, size, seed=2)
    memory = ViewMemory(2, 4, size, size)
    for fill in ("border", "blank"):
        filled = memory.composite(colours, validity, targets, _intrinsics(2), DEPTH, 4, fill=fill)
        assert torch.equal(filled.colours, colours) and torch.equal(filled.validity, validity)
    memory.add(torch.rand(2, 3, size, size) * 2 - 1, targets[:, 0])
    filled = memory.composite(colours, validity, targets, _intrinsics(2), DEPTH, 0, fill="border")  # k = 0
    assert torch.equal(filled.colours, colours) and torch.equal(filled.validity, validity)
    memory.clear(rows=[0])  # an episode reset empties its row only
    assert memory.num_frames.tolist() == [0, 1]
    filled = memory.composite(colours, validity, targets, _intrinsics(2), DEPTH, 4, fill="border")
    assert torch.equal(filled.colours[0], colours[0]) and torch.equal(filled.validity[0], validity[0])
    assert not torch.equal(filled.colours[1], colours[1])


def _bad_calls():
    eye = torch.eye(4, dtype=torch.float64)
    frame = torch.zeros(2, 3, 8, 8)
    colours, validity = torch.zeros(2, 3, 2, 8, 8), torch.zeros(2, 1, 2, 8, 8)
    targets, k4 = eye.expand(2, 2, 4, 4), _intrinsics(2)
    nan_pose, scaled = eye.clone().expand(2, 4, 4).clone(), eye.clone().expand(2, 4, 4).clone()
    nan_pose[1, 0, 3] = math.nan
    scaled[0, :3, :3] *= 2
    return {
        "frames": (lambda m: m.add(torch.zeros(2, 3, 8, 9), eye.expand(2, 4, 4)), "frames must have shape"),
        "frames-rows": (lambda m: m.add(frame, eye.expand(2, 4, 4), rows=[1]), "frames must have shape"),
        "frames-nan": (lambda m: m.add(frame.clone().fill_(math.nan), eye.expand(2, 4, 4)), "frames contain NaN"),
        "pose-nan": (lambda m: m.add(frame, nan_pose), "c2w contains NaN"),
        "pose-rigid": (lambda m: m.add(frame, scaled), "must be rigid"),
        "pose-shape": (lambda m: m.add(frame, eye[:3].expand(2, 3, 4)), r"c2w must have shape \(2, 4, 4\)"),
        "rows-range": (lambda m: m.add(frame[:1], eye.expand(1, 4, 4), rows=[2]), r"rows must lie in \[0, 1\]"),
        "rows-repeat": (lambda m: m.add(frame, eye.expand(2, 4, 4), rows=[1, 1]), "rows must not repeat"),
        "clear-range": (lambda m: m.clear(rows=[-1]), "rows must lie in"),
        "k": (lambda m: m.retrieve(targets, k4, -1, DEPTH), "k .* must be an integer >= 0"),
        "depth": (lambda m: m.retrieve(targets, k4, 2, -1.0), "depth must be a positive number"),
        "targets": (lambda m: m.retrieve(eye.expand(3, 2, 4, 4), k4, 2, DEPTH), "target_c2w must have shape"),
        "targets-nan": (lambda m: m.retrieve(nan_pose[:, None], k4, 2, DEPTH), "target_c2w contains NaN"),
        "intrinsics": (lambda m: m.retrieve(targets, k4[:, :3], 2, DEPTH), r"intrinsics must have shape \(B, 4\)"),
        "gaps": (lambda m: m.retrieve(targets, k4, 2, DEPTH, gaps=torch.ones(2, 2, 8, 8)), "gaps must be a bool"),
        "reference": (lambda m: m.composite(colours[..., :7], validity, targets, k4, DEPTH, 2, fill="border"),
                      "reference must have shape"),
        "validity": (lambda m: m.composite(colours, validity[:, :, :1], targets, k4, DEPTH, 2, fill="border"),
                     "validity must have shape"),
        "composite-targets": (lambda m: m.composite(colours, validity, targets[:, :1], k4, DEPTH, 2, fill="border"),
                              "target_c2w must have shape"),
        "fill": (lambda m: m.composite(colours, validity, targets, k4, DEPTH, 2, fill="zeros"), "fill must be one of"),
        "composite-k": (lambda m: m.composite(colours, validity, targets, k4, DEPTH, -2, fill="blank"), "k .* >= 0"),
        "generations": (lambda m: m.add(frame, eye.expand(2, 4, 4), generations=torch.zeros(2, 8, 7)),
                        "generations must have shape"),
        "generations-negative": (lambda m: m.add(frame, eye.expand(2, 4, 4), generations=-torch.ones(2, 8, 8)),
                                 "generations must be finite and >= 0"),
        "depths-net": (lambda m: m.add(frame, eye.expand(2, 4, 4), depths=torch.ones(2, 8, 8)),
                       "come with the depth_net"),
        "depths-shape": (lambda m: m.add(frame, eye.expand(2, 4, 4), depths=torch.ones(2, 8, 9), depth_net=object()),
                         "depths must have shape"),
        "generation-gaps": (lambda m: m.retrieve(targets, k4, 2, DEPTH, generation=torch.ones(2, 2, 8, 8)),
                            "generation needs gaps"),
        "generation-shape": (lambda m: m.composite(colours, validity, targets, k4, DEPTH, 2, fill="border",
                                                   generation=torch.ones(2, 1, 1, 8, 8)), "generation must have shape"),
        "sharpen-distance": (lambda m: m.composite(colours, validity, targets, k4, DEPTH, 2, fill="border",
                                                   generation=torch.ones(2, 1, 2, 8, 8), sharpen_distance=-1.0),
                             "sharpen_distance must be >= 0"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_inputs_raise_and_leave_the_store_unchanged(case):
    memory = ViewMemory(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    for step in range(4):  # full rows, so a wrong add would have to evict
        memory.add(torch.rand(2, 3, 8, 8, generator=generator), torch.stack([_pose(0, 0, 40.0 * step)] * 2))
    before = _state(memory)
    call, message = _bad_calls()[case]
    with pytest.raises(ValueError, match=message):
        call(memory)
    for old, new in zip(before, _state(memory)):
        assert torch.equal(old, new)


@pytest.mark.parametrize("kwargs, message", [
    (dict(capacity=0), "capacity must be a positive integer"),
    (dict(num_recent=4), r"num_recent must be an integer in \[0, capacity - 1\]"),
    (dict(grid_size=9), "grid_size must be at most"),
    (dict(valid_threshold=1.5), "valid_threshold must be in"),
])
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewMemory(**{"batch_size": 1, "capacity": 4, "height": 8, "width": 8, **kwargs})


def test_the_cost_benchmark_runs_and_its_store_stays_the_same_size(capsys, monkeypatch):
    """benchmarks/memory_cost.py on a tiny budget (in process: the import is the slow part)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_cost.py"
    spec = importlib.util.spec_from_file_location("memory_cost", path)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "memory_cost", benchmark)  # its dataclass looks itself up there
    spec.loader.exec_module(benchmark)
    benchmark.main(["--frames", "64", "--every", "32", "--chunk", "8", "--capacity", "4", "--size", "16",
                    "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 32 ") or
            line.startswith("| 64 ")]
    assert len(rows) == 4  # two measurements in each of the two modes
    assert len({row.rsplit("|", 2)[-2] for row in rows}) == 1  # the same store bytes throughout


def test_stored_depth_is_computed_once_per_frame_and_net(room):
    """composite through a depth net runs it on a stored frame the first time the frame is used,
    not at every retrieval; a frame that replaces it, or another net, computes it again. The
    result equals composite with nothing kept."""
    seen = []

    def net(frames):  # depth from the colours, so a wrong frame's depth would show
        seen.append(len(frames))
        return 1.5 + frames.mean(1)

    start = _pose(0.0, 0.0, 30.0)
    memory = ViewMemory(1, 4, SIZE, SIZE)
    memory.add(_render(room, start)[None], start[None])
    away = start @ _turn(60.0)
    target = (start @ _turn(8.0))[None, None]
    warped = warp_image(_render(room, away)[None], away[None], target, _intrinsics(1), DEPTH, with_validity=True)
    def fill(depth_net):
        return memory.composite(warped[:, :3], warped[:, 3:], target, _intrinsics(1), DEPTH, 2, fill="border",
                                depth_net=depth_net)
    first = fill(net)
    assert seen == [1] and bool(memory.has_depth[0, 0])
    again = fill(net)
    assert seen == [1]  # kept
    assert torch.equal(first.colours, again.colours) and torch.equal(first.validity, again.validity)
    memory.has_depth.zero_()
    torch.testing.assert_close(fill(net).colours, first.colours, atol=0, rtol=0)  # recomputed: the same
    assert seen == [1, 1]
    memory.add(_render(room, start @ _turn(1.0))[None], (start @ _turn(1.0))[None])  # supersedes (near-duplicate)
    assert not bool(memory.has_depth[0, 0])
    fill(net)
    assert seen == [1, 1, 1]
    other = lambda frames: net(frames) + 1.0  # noqa: E731
    assert not torch.equal(fill(other).colours, fill(net).colours)
    assert seen == [1, 1, 1, 1, 1]  # each net change recomputes
    memory.clear()
    assert not bool(memory.has_depth.any())
    # two rows, one with nothing stored: its missing picks take no depth (and the other row's result is its own)
    pair = ViewMemory(2, 4, SIZE, SIZE)
    pair.add(_render(room, start)[None], start[None], rows=[0])
    both = pair.composite(warped[:, :3].expand(2, -1, -1, -1, -1), warped[:, 3:].expand(2, -1, -1, -1, -1),
                          target.expand(2, -1, -1, -1), _intrinsics(2), DEPTH, 2, fill="border", depth_net=net)
    torch.testing.assert_close(both.colours[:1], first.colours, atol=1e-6, rtol=0)
    assert torch.equal(both.colours[1:], warped[:, :3]) and seen[-1] == 1


@pytest.mark.parametrize("fill", ["border", "blank"])
def test_sharpening_takes_each_pixel_from_the_least_resampled_near_frame(room, fill):
    """P (observed, generation 0) and Q = P turned 12° (generation 3, as if warped thrice) are
    stored; the last frame is Q. Warped to P turned 6°, Q's warp covers most of the view at
    generation 4. Sharpening takes every pixel P's warp covers fully from P (generation 1),
    keeps Q's elsewhere, and changes nothing when P's camera is farther than sharpen_distance."""
    p = _pose(0.0, 0.0, 30.0)
    q = p @ _turn(12.0)
    target = (p @ _turn(6.0))[None, None]
    images = {name: _render(room, pose) for name, pose in (("p", p), ("q", q))}
    warped = warp_image(images["q"][None], q[None], target, _intrinsics(1), DEPTH, fill, with_validity=True)
    colours, validity = warped[:, :3], warped[:, 3:]
    generation = torch.full_like(validity, 4.0)
    from_p = warp_image(images["p"][None], p[None], target, _intrinsics(1), DEPTH, "blank", with_validity=True)
    p_full = from_p[:, 3:] >= 0.999

    def composite(p_pose, sharpen_distance):
        memory = ViewMemory(1, 4, SIZE, SIZE)
        memory.add(images["p"][None], p_pose[None])
        memory.add(images["q"][None], q[None], generations=torch.full((1, SIZE, SIZE), 3.0))
        plain = memory.composite(colours, validity, target, _intrinsics(1), DEPTH, 2, fill=fill)
        sharp = memory.composite(colours, validity, target, _intrinsics(1), DEPTH, 2, fill=fill,
                                 generation=generation, sharpen_distance=sharpen_distance)
        return plain, sharp

    plain, sharp = composite(p, 0.5)
    assert plain.generation is None and sharp.generation is not None
    both = p_full & (validity >= 0.999)  # (a few pixels Q's warp sees in part are blended first, by validity)
    assert float(both.float().mean()) > 0.6  # measured 0.72
    assert torch.allclose(sharp.generation[both], torch.ones(()), atol=1e-4)
    assert float(sharp.generation[p_full].max()) < 1.5
    expected = from_p[:, :3] / from_p[:, 3:].clamp_min(1e-12) if fill == "border" else from_p[:, :3]
    mask = both.expand_as(colours)
    assert torch.allclose(sharp.colours[mask], expected[mask], atol=1e-5)
    assert float((sharp.colours[mask] - colours[mask]).abs().max()) > 0.05  # it did change pixels Q's warp saw
    # where P's warp is not full, Q's pixels (or the plain fill) stay
    rest = (~p_full).expand_as(colours)
    assert torch.equal(sharp.colours[rest], plain.colours[rest])
    kept = ~p_full & (validity >= 0.999)
    assert torch.equal(sharp.generation[kept], generation[kept])

    p_far = p.clone()
    p_far[:3, 3] += torch.tensor([1.0, 0.0, 0.0], dtype=p.dtype)  # P's camera one unit to the side
    plain_far, sharp_far = composite(p_far, 0.5)
    assert torch.equal(sharp_far.colours, plain_far.colours) and torch.equal(sharp_far.validity, plain_far.validity)


def test_a_near_duplicate_supersedes_only_when_it_is_not_more_resampled():
    memory = ViewMemory(1, 4, 8, 8)
    pose = _pose(0.0, 0.0, 10.0)[None]
    frames = [torch.full((1, 3, 8, 8), value) for value in (0.1, 0.2, 0.3)]
    memory.add(frames[0], pose, generations=torch.full((1, 8, 8), 1.0))
    memory.add(frames[1], pose, generations=torch.full((1, 8, 8), 2.0))  # more resampled: the stored one stays
    assert int(memory.num_frames) == 1 and int(memory.num_added) == 1
    assert torch.equal(memory.frames[0, 0], frames[0][0])
    memory.add(frames[2], pose, generations=torch.full((1, 8, 8), 1.0))  # as sharp: the newest wins
    assert int(memory.num_frames) == 1 and int(memory.num_added) == 2
    assert torch.equal(memory.frames[0, 0], frames[2][0])
