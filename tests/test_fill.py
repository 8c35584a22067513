"""The fill net (minwm_env/fill.py): what the warped reference never saw, drawn in pixels.

It must leave every seen pixel exactly as warped, save and load with the model folder, sit in
the reference of a ``warp_fill="net"`` model (training and streaming alike), and be trained and
resumed by ``python -m minwm_train.fill`` on rendered turns.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from minwm_env import camera
from minwm_env.depth import DepthConfig, DepthNet
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.fill import FILL_DIR, FillConfig, FillNet, load_fill_model
from minwm_env.models import ModelSettings, build_preset, load_model
from minwm_train import fill as fill_training


def _warp(batch: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(B, 4, H, W): random colours, the right half never seen (blank)."""
    generator = torch.Generator().manual_seed(seed)
    validity = torch.ones(batch, 1, size, size)
    validity[..., size // 2:] = 0
    colours = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1) * validity
    return torch.cat([colours, validity], 1)


def test_the_fill_net_only_draws_never_seen_pixels():
    net = FillNet(FillConfig(width=8))
    warp = _warp()
    with torch.no_grad():
        drawn = net(warp)
    seen = warp[:, 3:4].expand(-1, 3, -1, -1) == 1
    assert torch.equal(drawn[seen], warp[:, :3][seen])
    assert not torch.equal(drawn[~seen], warp[:, :3][~seen])
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        net(warp[:, :3])
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 4, 12, 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        FillConfig(width=12)


def test_fill_blanks_what_was_never_seen_and_skips_frames_that_saw_everything():
    """``fill`` reads (B, 3, N, H, W) with validity: whatever colour a never-seen pixel carries
    (a border streak) is not what the net reads, and a fully seen frame is returned untouched."""
    net = FillNet(FillConfig(width=8))
    warp = _warp(batch=2)
    colours = warp[:, :3].clone()
    validity = warp[:, 3:4].clone()
    validity[1] = 1  # the second frame saw everything
    streaked = colours + (1 - validity) * 0.7  # a non-blank never-seen colour
    frames = lambda x: x.transpose(0, 1)[None]  # (2, C, H, W) → (1, C, 2, H, W)
    filled = net.fill(frames(streaked), frames(validity))[0].transpose(0, 1)
    with torch.no_grad():
        expected = net(torch.cat([colours[:1], validity[:1]], 1))
    torch.testing.assert_close(filled[:1], expected, atol=1e-6, rtol=0)
    assert torch.equal(filled[1], streaked[1])


def test_the_fill_net_saves_loads_and_refuses_damage(tmp_path):
    net = FillNet(FillConfig(width=8))
    net.save(tmp_path / "f")
    warp = _warp()
    with torch.no_grad():
        torch.testing.assert_close(load_fill_model(tmp_path / "f")(warp), net(warp), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="not a fill model folder"):
        load_fill_model(tmp_path)
    (tmp_path / "f" / "config.json").write_text(json.dumps({"width": 16}))
    with pytest.raises(ValueError, match="do not match"):
        load_fill_model(tmp_path / "f")
    (tmp_path / "f" / "config.json").write_text(json.dumps({"width": 8}))
    weights = tmp_path / "f" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256|manifest|hash"):
        load_fill_model(tmp_path / "f")


def _model(**overrides):
    return build_preset("default-v4g", depth=DepthNet(DepthConfig(width=4, levels=2)),
                        fill=FillNet(FillConfig(width=8)), warp_fill="net", **overrides)


def test_a_net_filled_reference_keeps_seen_pixels_and_draws_the_rest(tmp_path):
    """The reference of a ``warp_fill="net"`` model equals the blank-filled one wherever the
    warp saw, differs where it did not, keeps the warp's validity, and survives save/load."""
    with pytest.raises(ValueError, match="needs a fill net"):
        build_preset("default-v4g", depth=DepthNet(DepthConfig(width=4, levels=2)), warp_fill="net")
    with pytest.raises(ValueError, match="warp_fill must be one of"):
        ModelSettings.from_dict({"warp_reference": True, "residual_reference": True, "warp_fill": "paint"}, "x")
    model = _model()
    blank = replace(model, settings=replace(model.settings, warp_fill="blank"))
    reference = torch.randn(1, 192, 1, 16, 16).clamp(-2, 2)
    eye = torch.eye(4, dtype=torch.float64)[None, None]
    turn = camera.delta_to_matrix(torch.tensor([0.0, 0, 0, 30, 0, 0]))[None, None]
    k = torch.tensor(model.settings.intrinsics)[None, None]
    ours, plain = model.residual_reference(reference, eye, eye, turn, k), blank.residual_reference(reference, eye, eye, turn, k)
    codec = model.codec
    validity = codec.unpack(ours[:, 192:] * codec.scale)  # (1, 1, 4, H, W)
    torch.testing.assert_close(validity, codec.unpack(plain[:, 192:] * codec.scale), atol=0, rtol=0)
    assert 0.05 < float(validity.mean()) < 0.95  # a 30° turn brings new content into view
    seen = (validity == 1).expand(-1, 3, -1, -1, -1)
    ours_rgb, plain_rgb = codec.unpack(ours[:, :192]), codec.unpack(plain[:, :192])
    torch.testing.assert_close(ours_rgb[seen], plain_rgb[seen], atol=1e-6, rtol=0)
    assert float((ours_rgb - plain_rgb)[~seen].abs().mean()) > 1e-3
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / FILL_DIR / "config.json").is_file()
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.residual_reference(reference, eye, eye, turn, k), ours, atol=0, rtol=0)


def test_a_net_filled_model_streams_in_the_env():
    """The env streams a fill-net model: a turn's new strip is the net's drawing (not the blank
    model's grey), frame after frame; standing still changes nothing."""
    model = _model()
    torch.nn.init.zeros_(model.backbone.transformer.proj_out.weight)  # the output: the reference alone
    torch.nn.init.zeros_(model.backbone.transformer.proj_out.bias)
    blank = replace(model, settings=replace(model.settings, warp_fill="blank"))
    frames = {}
    for name, m in (("net", model), ("blank", blank)):
        env = WorldModelEnv(model=m, memory=False)
        start, _ = env.reset(seed=0)
        turned = env.step(np.array([0, 0, 0, 6.0, 0, 0], np.float32))[0]
        still = env.step(np.zeros(6, np.float32))[0]
        frames[name] = (start, turned, still)
    start, turned, still = frames["net"]
    assert not np.array_equal(turned[-1], frames["blank"][1][-1])
    assert np.abs(still[-1].astype(int) - turned[-1].astype(int)).max() <= 1  # seen pixels stay put


def test_fill_training_learns_resumes_and_attaches(tmp_path, capsys):
    """``python -m minwm_train.fill`` renders turns of the training layouts, trains (L1, then
    the critic), checkpoints and goes on from its checkpoint, and attaches the net to a model."""
    out = tmp_path / "fill"
    common = ["--out", str(out), "--num-pairs", "6", "--held-out", "4", "--l1-steps", "3", "--batch-size", "2",
              "--width", "8", "--checkpoint-every", "3", "--no-progress"]
    fill_training.main([*common, "--steps", "3"])
    pairs = np.load(out / fill_training.PAIRS_FILE)
    assert pairs["train_warp"].shape == (6, 64, 64, 3) and pairs["held_warp"].shape == (4, 64, 64, 3)
    assert 0 < pairs["held_seen"].mean() < 1
    tensors = fill_training.as_tensors({k[6:]: pairs[k] for k in pairs.files if k.startswith("train_")})
    assert tensors["warp"].shape == (6, 4, 64, 64)  # what the net reads: never-seen pixels blank
    assert float((tensors["warp"][:, :3] * (1 - tensors["warp"][:, 3:])).abs().max()) == 0.0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    first = load_fill_model(out / "model")
    model = _model()
    model.save_pretrained(tmp_path / "wm")
    fill_training.main([*common, "--steps", "5", "--attach", str(tmp_path / "wm")])
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "at step 3" in printed and "row-mean fill" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 5] and "critic" in records[-1] and "critic" not in records[0]
    attached = load_model(tmp_path / "wm").fill
    trained = load_fill_model(out / "model")
    assert all(torch.equal(a, b) for a, b in zip(attached.parameters(), trained.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), trained.parameters()))
    assert (out / "held_out.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        fill_training.main([*common, "--steps", "5", "--width", "16"])
    assert "width 8" in capsys.readouterr().err


def test_what_is_drawn_is_drawn_once_per_row_and_seen_from_every_camera():
    """``fill_views`` runs the net on the last camera's frame only; from cameras at the same
    pose the earlier frames show exactly that drawing, and a turn moves it as the camera moves."""
    from minwm_env.warp import fill_views, warp_image

    calls = []

    class Counting(FillNet):
        def draw(self, warp):
            calls.append(warp.shape[0])
            return super().draw(warp)

    net = Counting(FillConfig(width=8))
    frame = _warp(batch=2)  # (2, 4, H, W): two rows
    warped = frame[:, :, None].expand(-1, -1, 4, -1, -1)  # four cameras at one pose
    same = torch.eye(4, dtype=torch.float64).expand(2, 4, 4, 4)
    k = torch.tensor([[0.87, 0.87, 0.5, 0.5]]).expand(2, 4)
    out = fill_views(net, warped, same, k, depth=2.0)
    assert calls == [2] and out.shape == (2, 4, 4, 16, 16)
    for i in range(3):
        torch.testing.assert_close(out[:, :3, i], out[:, :3, 3], atol=1e-5, rtol=0)
    assert torch.equal(out[:, 3:], warped[:, 3:])
    # a camera turned 10° from the last one sees the last frame's drawing warped into it
    turned = same.clone()
    turned[:, :3] = camera.delta_to_matrix(torch.tensor([0.0, 0, 0, 10, 0, 0]))
    out = fill_views(net, warped, turned, k, depth=2.0)
    expected = warp_image(out[:, :3, 3], turned[:, 3], turned[:, :3], k, 2.0, "border")
    unseen = warped[:, 3:, :3].expand(-1, 3, -1, -1, -1) == 0
    torch.testing.assert_close(out[:, :3, :3][unseen], expected[unseen].float(), atol=1e-5, rtol=0)


def test_fill_cost_benchmark_runs(tmp_path, monkeypatch, capsys):
    """benchmarks/fill_cost.py on a fill-net model at tiny repeats: every figure printed and saved."""
    import importlib.util
    from pathlib import Path

    _model().save_pretrained(tmp_path / "m")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fill_cost.py"
    spec = importlib.util.spec_from_file_location("fill_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr("sys.argv", ["fill_cost.py", "--model", str(tmp_path / "m"), "--repeats", "1",
                                     "--env-steps", "1", "--json", str(tmp_path / "cost.json")])
    module.main()
    figures = json.loads((tmp_path / "cost.json").read_text())
    assert all(figures[k] > 0 for k in ("warp only", "fill once a chunk", "fill every frame"))
    assert len(figures["env step ms, fill net"]) == 2 and "decoded frames/s" in capsys.readouterr().out


def test_rollout_training_streams_turns_through_the_net_and_learns_from_its_own_drawing(tmp_path, capsys):
    """``--rollout-steps K`` renders turns of K steps and trains on them streamed through the
    net (:func:`unroll`): each step warps the previous step's filled frame, so a later step's loss
    reaches the net through what it drew before; the log gains the held-out turns' L1."""
    turns = fill_training.render_turns(2, seed=0, scene_seeds=range(3), steps=2, progress=False)
    assert turns["frames"].shape == (2, 3, 64, 64, 3) and turns["c2w"].shape == (2, 3, 4, 4)
    tensors = fill_training.turn_tensors(turns)
    torch.manual_seed(0)
    net = FillNet(FillConfig(width=8))
    steps = fill_training.unroll(net, tensors)
    (first, first_validity), (second, second_validity) = steps
    assert 0 < float(first_validity.mean()) < 1 and 0 < float(second_validity.mean()) < 1
    # the first step's drawing is warped into the second step's seen pixels: its gradient flows
    drawn_first = torch.autograd.grad((second * second_validity).sum(), first, retain_graph=True)[0]
    assert float((drawn_first.abs() * (1 - first_validity)).sum()) > 0

    out = tmp_path / "fill"
    common = ["--out", str(out), "--num-pairs", "4", "--held-out", "2", "--l1-steps", "1", "--batch-size", "2",
              "--width", "8", "--checkpoint-every", "2", "--rollout-steps", "2", "--num-turns", "3",
              "--held-out-turns", "2", "--no-progress"]
    fill_training.main([*common, "--steps", "2"])
    saved = np.load(out / fill_training.TURNS_FILE)
    assert saved["train_frames"].shape == (3, 3, 64, 64, 3) and saved["held_frames"].shape == (2, 3, 64, 64, 3)
    before = load_fill_model(out / "model")
    fill_training.main([*common, "--steps", "3"])
    assert "at step 2" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    assert all(np.isfinite(r["held_turn_l1"]) and r["held_turn_l1"] > 0 for r in records)
    assert "critic" in records[-1]
    after = load_fill_model(out / "model")
    assert not all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    with pytest.raises(SystemExit):
        fill_training.main([*common, "--steps", "3", "--rollout-steps", "-1"])


def _interior_holes(validity: torch.Tensor) -> int:
    """Never-seen pixels with seen pixels further along their row on both sides (a hole beside
    an object, not the strip at the frame's edge)."""
    seen = validity[:, 0] > 0.5  # (B, H, W)
    left = seen.int().cummax(-1).values.bool()
    right = seen.flip(-1).int().cummax(-1).values.bool().flip(-1)
    return int((~seen & left & right).sum())


def test_orbiting_turns_strafe_around_a_point_and_open_holes_beside_objects(tmp_path):
    """``--orbit`` turns strafe 0.08–0.3 a step while turning, on free floor, and so show what
    near objects hid; turns on the spot barely move the camera and open few such holes."""
    orbits = fill_training.render_turns(6, seed=3, scene_seeds=range(3), steps=3, orbit=1.0, progress=False)
    turns = fill_training.render_turns(6, seed=3, scene_seeds=range(3), steps=3, progress=False)
    for data, low, high in ((orbits, 0.08, 0.3), (turns, 0.0, 0.1)):
        c2w = data["c2w"]
        moves = np.linalg.norm(c2w[:, 1:, :3, 3] - c2w[:, :-1, :3, 3], axis=-1)
        assert ((moves >= low - 1e-6) & (moves <= high + 1e-6)).all()
    with torch.no_grad():
        net = FillNet(FillConfig(width=8))
        holes = [sum(_interior_holes(v) for _, v in fill_training.unroll(net, fill_training.turn_tensors(d)))
                 for d in (orbits, turns)]
    assert holes[0] > 5 * max(holes[1], 1), holes
    with pytest.raises(ValueError, match="orbit"):
        fill_training.render_turns(1, seed=0, scene_seeds=range(1), steps=1, orbit=1.5, progress=False)
    # the cache knows its orbit share: another share renders the turns again
    out = tmp_path / "fill"
    out.mkdir()
    first = fill_training.load_or_render_turns(out, 2, 1, 1, seed=0, progress=False, orbit=0.0)
    again = fill_training.load_or_render_turns(out, 2, 1, 1, seed=0, progress=False, orbit=1.0)
    assert not np.array_equal(first[0]["c2w"], again[0]["c2w"])
    assert float(np.load(out / fill_training.TURNS_FILE)["orbit"]) == 1.0
    with pytest.raises(SystemExit):
        fill_training.main(["--out", str(out), "--rollout-steps", "1", "--orbit", "-0.1", "--no-progress"])


def test_depth_net_streams_turns_through_its_own_depth(tmp_path):
    """``--depth-model``: each step of a turn warps through the depth net's depth of the frame it
    warps, as the stream does; on orbits that leaves holes where the true depth's warp sees (the
    depth net's soft object edges tear what they stretch), which the net is then trained on."""
    from minwm_env.depth import load_depth_model
    from minwm_env.models import SHIPPED_MODELS
    depth_net = load_depth_model(SHIPPED_MODELS["minwm-default"] / "depth")
    orbits = fill_training.turn_tensors(fill_training.render_turns(4, seed=3, scene_seeds=range(3), steps=2,
                                                                   orbit=1.0, progress=False))
    with torch.no_grad():
        net = FillNet(FillConfig(width=8))
        true_steps = fill_training.unroll(net, orbits)
        net_steps = fill_training.unroll(net, orbits, depth_net)
        again = fill_training.unroll(net, orbits, depth_net)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(net_steps, again))  # deterministic
    assert not torch.equal(true_steps[0][1], net_steps[0][1])
    torn = sum(int(((t > 0.5) & (n < 0.5)).sum()) for (_, t), (_, n) in zip(true_steps, net_steps))
    assert torn > 50, torn
    out = tmp_path / "fill"
    common = ["--out", str(out), "--num-pairs", "4", "--held-out", "2", "--l1-steps", "1", "--batch-size", "2",
              "--width", "8", "--checkpoint-every", "1", "--no-progress"]
    with pytest.raises(SystemExit):  # pairs warp through the true depth: refused before rendering
        fill_training.main([*common, "--steps", "1", "--depth-model", str(SHIPPED_MODELS["minwm-default"] / "depth")])
    assert not (out / fill_training.PAIRS_FILE).exists()
    with pytest.raises(SystemExit):
        fill_training.main([*common, "--steps", "1", "--rollout-steps", "1", "--depth-model", str(tmp_path / "none")])
    fill_training.main([*common, "--steps", "1", "--rollout-steps", "1", "--num-turns", "2", "--held-out-turns", "1",
                        "--depth-model", str(SHIPPED_MODELS["minwm-default"] / "depth")])
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and np.isfinite(record["held_turn_l1"])
