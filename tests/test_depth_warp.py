"""The warp through per-pixel depth (minwm_env/warp.py: splat_depth, warp_image_depth) against real
renders, the depth net (minwm_env/depth.py) and its training (minwm_train/depth.py), and a world
model whose warp reads its own depth net."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch

from minwm_env import camera
from minwm_env.codec import from_uint8
from minwm_env.depth import DEPTH_DIR, DepthConfig, DepthNet, load_depth_model
from minwm_env.eval import quality
from minwm_env.models import build_preset, load_model
from minwm_env.warp import splat_depth, warp_image, warp_image_depth
from minwm_env.world.renderer import look_pose
from minwm_train import depth as depth_training

from test_warp import room  # noqa: F401  (the room renderer fixture)

SIZE = 64


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = float(((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[0]))
    return 10 * np.log10(4.0 / mse)  # images in [-1, 1]


def test_a_rotation_warps_the_same_through_any_depth():
    """A turn's reprojection does not depend on depth: on the pixels the source saw, the depth
    warp equals the plane warp, whatever the depth map."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    depth = torch.rand(2, 32, 32, generator=generator) * 4 + 0.5
    depth[0, :4] = torch.inf  # some sky
    turn = camera.delta_to_matrix(torch.tensor([[0.0, 0, 0, 7, 2, 0], [0.0, 0, 0, -5, 0, 3]]))[:, None]
    eye = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]] * 2)
    through_depth = warp_image_depth(image, depth, eye, turn, k, with_validity=True)
    plane = warp_image(image, eye, turn, k, None, with_validity=True)
    covered = through_depth[:, 3:] > 0.5
    inside = plane[:, 3:] > 0.999
    assert float((covered & inside).sum()) > 0.85 * float(inside.sum())
    torch.testing.assert_close(through_depth[:, :3] * (covered & inside), plane[:, :3] * (covered & inside),
                               atol=1e-5, rtol=0)


def test_a_step_towards_a_wall_magnifies_it_without_cracks():
    """A fronto-parallel textured plane 2 units ahead, the camera 1 unit closer: the image scales
    by 2 about the centre; every target pixel is covered and takes the magnified colour."""
    size = 32
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([(xs % 4 < 2).float(), (ys % 6 < 3).float(), (xs / size)])[None] * 2 - 1
    depth = torch.full((1, size, size), 2.0)
    step = camera.delta_to_matrix(torch.tensor([0.0, 0, 1.0, 0, 0, 0]))[None, None]
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]])
    warped = warp_image_depth(image, depth, torch.eye(4)[None], step, k, with_validity=True)[0, :, 0]
    assert float(warped[3].min()) == 1.0  # no cracks
    expected = warp_image(image, torch.eye(4)[None], step, k, 1.0)[0, :, 0]  # a plane 1 unit ahead of the target
    torch.testing.assert_close(warped[:3], expected, atol=1e-4, rtol=0)
    z = splat_depth(depth, torch.eye(4)[None], step, k)
    torch.testing.assert_close(z, torch.ones_like(z), atol=1e-9, rtol=0)


def test_the_truth_depth_warp_predicts_renders_far_better_than_one_plane(room):
    """Walking and turning through the room: the start frame warped through its own truth depth
    matches the rendered view on the pixels the start frame showed by several dB more than the
    plane warp, and its validity marks those pixels."""
    k = torch.from_numpy(room.intrinsics).float()[None]
    start = look_pose(0.0, 0.0, 1.0, 30.0)
    source = from_uint8(torch.from_numpy(room.render(start)))[None]
    source_depth = torch.from_numpy(room.render_depth(start))[None]
    for delta in ([0.0, 0, 0.3, 0, 0, 0], [0.2, 0, 0.2, 10, 0, 0], [-0.3, 0, 0, -6, 0, 0]):
        move = camera.delta_to_matrix(torch.tensor(delta))
        target_c2w = start @ move.numpy()
        truth = from_uint8(torch.from_numpy(room.render(target_c2w)))
        seen = torch.from_numpy(quality.seen_mask(start, room.render_depth(start), target_c2w, room.intrinsics,
                                                  room.render_depth(target_c2w)))
        warped = warp_image_depth(source, source_depth, torch.eye(4)[None], move[None, None], k,
                                  with_validity=True)[0, :, 0]
        plane = warp_image(source, torch.eye(4)[None], move[None, None], k, 2.0)[0, :, 0]
        assert _psnr(warped[:3], truth, seen) > _psnr(plane, truth, seen) + 3.0
        assert _psnr(warped[:3], truth, seen) > 27.0
        valid = warped[3] > 0.5
        assert float((valid & seen).sum()) > 0.97 * float(seen.sum())  # it covers what the start frame showed
        assert float((valid & ~seen).sum()) < 0.05 * SIZE * SIZE  # and little else


def test_never_seen_pixels_take_the_plane_fill_and_validity_zero():
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    turn = camera.delta_to_matrix(torch.tensor([0.0, 0, 0, 20, 0, 0]))[None, None]
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]])
    depth = torch.full((1, 32, 32), 3.0)
    for fill in ("border", "blank"):
        warped = warp_image_depth(image, depth, torch.eye(4)[None], turn, k, fill=fill, with_validity=True)
        plane = warp_image(image, torch.eye(4)[None], turn, k, 2.0, fill=fill)
        new = warped[0, 3, 0] < 0.5
        # the strip turned into; after a yaw the far side shrinks (keystone), so the top and bottom
        # rows' ends past the middle lie just out of the source's view (2 points a pixel side)
        assert new[:, -4:].all() and not new[1:-1, :20].any() and not new[:, :15].any()
        torch.testing.assert_close(warped[0, :3, 0][:, new], plane[0, :, 0][:, new], atol=0, rtol=0)


def test_depth_warp_inputs_are_checked():
    image = torch.zeros(1, 3, 8, 8)
    eye = torch.eye(4)[None]
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]])
    with pytest.raises(ValueError, match="source_depth must be"):
        warp_image_depth(image, torch.ones(1, 8, 9), eye, eye[:, None], k)
    with pytest.raises(ValueError, match="must be positive"):
        warp_image_depth(image, -torch.ones(1, 8, 8), eye, eye[:, None], k)
    with pytest.raises(ValueError, match="warp fill"):
        warp_image_depth(image, torch.ones(1, 8, 8), eye, eye[:, None], k, fill="mirror")


def test_depth_net_saves_loads_and_refuses_damage(tmp_path):
    net = DepthNet(DepthConfig(width=4, levels=2))
    frames = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    depth = net.predict(frames)
    assert depth.shape == (3, 16, 16) and bool((depth > 0).all())
    net.save(tmp_path / "d")
    torch.testing.assert_close(load_depth_model(tmp_path / "d").predict(frames), depth, atol=0, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        net.predict(frames.float())
    with pytest.raises(ValueError, match="divide by 4"):
        net(torch.zeros(1, 3, 18, 16))
    with pytest.raises(FileNotFoundError, match="not a depth model folder"):
        load_depth_model(tmp_path)
    weights = tmp_path / "d" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256|manifest|hash"):
        load_depth_model(tmp_path / "d")
    with pytest.raises(ValueError, match="width and levels"):
        DepthConfig(width=0)


def test_depth_training_learns_rendered_depth(tmp_path):
    """On a few rendered frames the training loss falls well below the untrained net's."""
    frames, inverse = depth_training.render_frames(16, seed=3, progress=False)
    assert frames.shape == (16, SIZE, SIZE, 3) and inverse.shape == (16, SIZE, SIZE)
    assert float((inverse == 0).mean()) > 0.01 and float(inverse.max()) > 0.3  # sky and near surfaces
    config = DepthConfig(width=8, levels=2)
    before = depth_training.evaluate(depth_training.train_depth(frames, inverse, 1, 8, lr=0.0, config=config,
                                                                progress=False), frames, inverse)
    after = depth_training.evaluate(depth_training.train_depth(frames, inverse, 60, 8, lr=3e-3, config=config,
                                                               progress=False), frames, inverse)
    assert after["inverse_depth_l1"] < 0.6 * before["inverse_depth_l1"]


def test_depth_cli_trains_and_attaches(tmp_path, capsys):
    model = build_preset("default-v4", depth=DepthNet(DepthConfig(width=4, levels=2)))
    model.save_pretrained(tmp_path / "wm")
    depth_training.main(["--out", str(tmp_path / "depth"), "--num-frames", "20", "--steps", "2", "--width", "4",
                         "--attach", str(tmp_path / "wm"), "--no-progress"])
    out = capsys.readouterr().out
    assert "within 25% of the true depth" in out and "attached" in out
    assert json.loads((tmp_path / "wm" / DEPTH_DIR / "config.json").read_text())["width"] == 4
    loaded = load_model(tmp_path / "wm")
    trained = load_depth_model(tmp_path / "depth" / "model")
    for a, b in zip(loaded.depth.parameters(), trained.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(SystemExit):
        depth_training.main(["--out", str(tmp_path / "depth"), "--attach", str(tmp_path), "--no-progress"])
    assert "not a world model folder" in capsys.readouterr().err


def test_a_model_warping_through_its_depth_net(tmp_path):
    """default-v4 needs a depth net, saves it with the model, and its reference follows it."""
    with pytest.raises(ValueError, match="needs a depth net"):
        build_preset("default-v4")
    net = DepthNet(DepthConfig(width=4, levels=2))
    model = build_preset("default-v4", depth=net)
    assert model.settings.warp_depth_source == "model"
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    reference = torch.randn(1, 192, 1, 16, 16).clamp(-2, 2)
    eye = torch.eye(4, dtype=torch.float64)[None, None]
    step = camera.delta_to_matrix(torch.tensor([0.1, 0, 0.4, 4, 0, 0]))[None, None]
    k = torch.tensor(model.settings.intrinsics)[None, None]
    ours = model.residual_reference(reference, eye, eye, step, k)
    torch.testing.assert_close(loaded.residual_reference(reference, eye, eye, step, k), ours, atol=0, rtol=0)
    plane = build_preset("default-v2b").residual_reference(reference, eye, eye, step, k)
    assert ours.shape == plane.shape and not torch.allclose(ours, plane, atol=1e-3)


def test_memory_fills_through_stored_frames_depth(room):
    """Coming back near a stored view after looking away: what the memory fills, reprojected
    through the stored frame's own depth, is closer to the render than through the plane."""
    from minwm_env.memory import ViewMemory

    k = torch.from_numpy(room.intrinsics)
    start = look_pose(0.0, 0.0, 1.0, 30.0)
    away = start @ camera.delta_to_matrix(torch.tensor([0.0, 0, 0, 70, 0, 0])).numpy()
    back = start @ camera.delta_to_matrix(torch.tensor([-0.3, 0, 0.2, 5, 0, 0])).numpy()
    memory = ViewMemory(1, 4, SIZE, SIZE, dtype=torch.float64)
    memory.add(from_uint8(torch.from_numpy(room.render(start)))[None].double(), torch.from_numpy(start)[None])
    last = from_uint8(torch.from_numpy(room.render(away)))[None].double()
    target = torch.from_numpy(back)[None, None]
    warped = warp_image(last, torch.from_numpy(away)[None], target, k[None], 2.0, with_validity=True)
    truth = from_uint8(torch.from_numpy(room.render(back))).double()
    start_depth = torch.from_numpy(room.render_depth(start)).double()
    results = {}
    for name, net in (("plane", None), ("depth", lambda frames: start_depth.expand(len(frames), -1, -1))):
        filled = memory.composite(warped[:, :3], warped[:, 3:], target, k[None], 2.0, 2, fill="border", depth_net=net)
        added = (filled.validity > warped[:, 3:])[0, 0, 0]
        assert float(added.float().mean()) > 0.5  # the memory fills most of the view
        results[name] = (_psnr(filled.colours[0, :, 0].float(), truth.float(), added), added)
    assert results["depth"][0] > results["plane"][0] + 2.0


def test_without_the_plane_fill_never_seen_pixels_are_zero_and_the_rest_is_the_same():
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    turn = camera.delta_to_matrix(torch.tensor([0.0, 0, 0.3, 20, 0, 0]))[None, None].expand(2, 1, 4, 4)
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]]).expand(2, 4)
    depth = torch.rand(2, 32, 32) * 3 + 1
    full = warp_image_depth(image, depth, torch.eye(4)[None].expand(2, 4, 4), turn, k, fill="border",
                            with_validity=True)
    bare = warp_image_depth(image, depth, torch.eye(4)[None].expand(2, 4, 4), turn, k, fill="border",
                            with_validity=True, plane_fill=False)
    seen = full[:, 3:] > 0.5
    assert 0 < float(seen.float().mean()) < 1
    assert torch.equal(bare[:, 3:], full[:, 3:])
    assert torch.equal(bare[:, :3][seen.expand(-1, 3, -1, -1, -1)], full[:, :3][seen.expand(-1, 3, -1, -1, -1)])
    assert float(bare[:, :3][~seen.expand(-1, 3, -1, -1, -1)].abs().max()) == 0


def test_blocks_in_threads_equal_the_plain_loop_and_keep_the_grad_mode(monkeypatch):
    """A batch larger than a block is warped a block per thread (``parallel_map``): the same
    values as one block after another, bit for bit, and the same gradient; each thread runs
    under the caller's grad and inference modes (torch keeps them per thread)."""
    from minwm_env import warp as warp_module

    generator = torch.Generator().manual_seed(3)
    rows, size = 5, 32
    image = torch.rand(rows, 3, size, size, generator=generator) * 2 - 1
    depth = torch.rand(rows, size, size, generator=generator) * 3 + 1
    deltas = torch.zeros(rows, 2, 6, dtype=torch.float64)
    deltas[..., 2], deltas[..., 3] = 0.2, torch.linspace(-15, 15, rows * 2).reshape(rows, 2)
    turn = camera.delta_to_matrix(deltas)
    eye = torch.eye(4, dtype=torch.float64).expand(rows, 4, 4)
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]]).expand(rows, 4)
    monkeypatch.setattr(warp_module, "BLOCK_PIXELS", 2 * size * size)  # one row (2 targets) a block

    def warp_both_ways():
        source = image.clone().requires_grad_(True)
        with torch.no_grad():
            quiet = warp_image_depth(source, depth, eye, turn, k, with_validity=True)
        out = warp_image_depth(source, depth, eye, turn, k, with_validity=True)
        out[:, :3].square().sum().backward()
        return quiet, out.detach(), source.grad

    def modes(_):
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), threading.current_thread().name

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            quiet_modes = warp_module.parallel_map(modes, range(4))
        with torch.inference_mode():
            inference_modes = warp_module.parallel_map(modes, range(4))
        quiet, threaded, grad = warp_both_ways()
        monkeypatch.setattr(warp_module, "parallel_map", lambda function, items: [function(i) for i in items])
        _, plain, plain_grad = warp_both_ways()
    finally:
        torch.set_num_threads(threads)
    assert all(not grad and not inference and name != "MainThread" for grad, inference, name in quiet_modes)
    assert all(inference for _, inference, _ in inference_modes)
    assert torch.equal(quiet, plain) and torch.equal(threaded, plain)
    assert float(grad.abs().sum()) > 0 and torch.equal(grad, plain_grad)


def test_blocks_in_threads_work_in_a_forked_child():
    """A process forked after the block threads started (SubprocVecEnv may fork) builds threads
    of its own rather than waiting on threads it did not inherit."""
    import multiprocessing

    from minwm_env import warp as warp_module

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert warp_module.parallel_map(abs, [-1, -2]) == [1, 2]  # the parent's pool exists
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            result = pool.apply_async(_map_in_child).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert result == [1, 2, 3]


def _map_in_child():
    from minwm_env import warp as warp_module

    assert torch.get_num_threads() == 2  # inherited: the child maps over threads too
    return warp_module.parallel_map(abs, [-1, -2, -3])


def test_depth_training_resumes_exactly_and_starts_from_a_given_net(tmp_path):
    """A run interrupted after its checkpoint goes on to the same weights as one that was not;
    ``init`` starts from a given net; a checkpoint of another run length is refused."""
    frames, inverse = depth_training.render_frames(8, seed=5, progress=False)
    config = DepthConfig(width=4, levels=2)
    whole = depth_training.train_depth(frames, inverse, 6, 4, config=config, progress=False,
                                       checkpoint=tmp_path / "a", checkpoint_every=3)
    assert torch.load(tmp_path / "a" / depth_training.CHECKPOINT_FILE, weights_only=False)["step"] == 3
    (tmp_path / "b" / "checkpoint").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / depth_training.CHECKPOINT_FILE, tmp_path / "b" / depth_training.CHECKPOINT_FILE)
    resumed = depth_training.train_depth(frames, inverse, 6, 4, config=config, progress=False,
                                         checkpoint=tmp_path / "b", checkpoint_every=3)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    fresh = depth_training.train_depth(frames, inverse, 6, 4, config=config, progress=False)  # no checkpoints
    for a, b in zip(whole.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    started = depth_training.train_depth(frames, inverse, 1, 4, lr=0.0, config=config, progress=False, init=whole)
    for a, b in zip(whole.parameters(), started.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="belongs to a run of 6 steps"):
        depth_training.train_depth(frames, inverse, 9, 4, config=config, progress=False, checkpoint=tmp_path / "b")
    (tmp_path / "b" / depth_training.CHECKPOINT_FILE).write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a depth-training checkpoint"):
        depth_training.train_depth(frames, inverse, 6, 4, config=config, progress=False, checkpoint=tmp_path / "b")
    with pytest.raises(SystemExit):
        depth_training.main(["--out", str(tmp_path / "c"), "--checkpoint-every", "0", "--no-progress"])
    assert not (tmp_path / "c" / depth_training.FRAMES_FILE).exists()  # refused before rendering anything
    with pytest.raises(ValueError, match="config"):
        depth_training.train_depth(frames, inverse, 1, 4, config=DepthConfig(width=8, levels=2), progress=False,
                                   init=whole)
