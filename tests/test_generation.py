"""The suites a blur cannot win, on envs whose answers we know: the truth itself scores perfectly,
a blurred truth fails detail, a model that repeats its start frame fails new views and revisits."""

import gymnasium as gym
import numpy as np
import pytest

from minwm_env.envs.ground_truth import GroundTruthEnv
from minwm_env.eval import quality
from minwm_env.eval.evaluator import EvalConfig, Evaluator
from minwm_env.eval.report import revisit_motion_table
from minwm_env.eval.rollout import IgnoreActions

SUITES = ("novel_view", "revisit", "object_scale")


class BlurFrames(gym.Wrapper):
    """The truth seen through a Gaussian blur: right on average, without detail."""

    def __init__(self, env, sigma: float = 1.5):
        super().__init__(env)
        self.sigma = sigma

    def _blur(self, obs, info):
        info = {**info, "frames": quality.gaussian_blur(np.asarray(info["frames"]), self.sigma)}
        return quality.gaussian_blur(np.asarray(obs), self.sigma), info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if (kwargs.get("options") or {}).get("start_pose") is not None:
            return obs, info  # the start frame is given, as a world model is given its start image
        return self._blur(obs, info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return (*self._blur(obs, info)[:1], reward, terminated, truncated, self._blur(obs, info)[1])


def _truth():
    return GroundTruthEnv(scene="room", scene_seed=100, obs_mode="chunk")


@pytest.fixture(scope="module")
def scores():
    config = EvalConfig(seed=2, novel_chunks=4, object_paths=1, object_chunks=3, mirrored=False, fd_paths=12)
    models = {"truth": _truth(), "blurred": BlurFrames(_truth()), "repeat_start": IgnoreActions(_truth())}
    return {name: Evaluator(model, _truth(), config).run(SUITES)["summary"] for name, model in models.items()}


def test_the_truth_scores_perfectly(scores):
    truth = scores["truth"]
    assert truth["novel_view/seen_psnr_db"] == 100.0 and truth["novel_view/seen_ssim"] == pytest.approx(1.0)
    assert truth["novel_view/new_detail_ratio"] == pytest.approx(1.0)
    assert truth["novel_view/blockiness"] == pytest.approx(truth["novel_view/truth_blockiness"])
    for length in ("short", "long"):
        assert truth[f"revisit/{length}_psnr_db"] == 100.0 and truth[f"revisit/{length}_detail_ratio"] == 1.0
        assert truth[f"revisit/{length}_seen_psnr_db"] == 100.0 and truth[f"revisit/{length}_self_psnr_db"] == 100.0
        assert truth[f"revisit/{length}_r_dist"] == truth[f"revisit/{length}_truth_r_dist"]
        assert truth[f"revisit/{length}_motion_failures"] == truth[f"revisit/{length}_truth_motion_failures"]
        for kind in ("look", "walk"):
            assert truth[f"revisit/{length}_{kind}_r_dist"] == truth[f"revisit/{length}_{kind}_truth_r_dist"]
    assert truth["object_scale/area_ratio"] == pytest.approx(1.0, abs=0.05)
    table = "\n".join(revisit_motion_table(truth))  # the report shows R_dist beside the estimator's floor
    assert "the motion estimator's floor" in table and table.count("| 65 frames |") == 1
    assert 0.1 < truth["novel_view/new_fraction"] < 0.9  # the paths do reveal new content
    assert truth["novel_view/far_plausible_fraction"] >= 0.9
    assert truth["novel_view/far_fd"] == pytest.approx(0.0, abs=1e-6)
    # the references measured beside it: the truth on other paths, and blurred
    assert 0 < truth["novel_view/far_fd_floor"] < truth["novel_view/far_fd_blurred_truth"] / 2


def test_a_blurred_truth_fails_detail(scores):
    blurred, truth = scores["blurred"], scores["truth"]
    assert blurred["novel_view/new_detail_ratio"] < 0.7
    for length in ("short", "long"):
        assert blurred[f"revisit/{length}_detail_ratio"] < 0.7
    # PSNR alone would call it good: on seen content it is close to the truth
    assert blurred["novel_view/seen_psnr_db"] > blurred["novel_view/warp_seen_psnr_db"]
    assert truth["novel_view/new_detail_ratio"] - blurred["novel_view/new_detail_ratio"] > 0.3
    # and it looks less like the world than the truth on other paths does
    assert blurred["novel_view/far_fd"] > 2 * blurred["novel_view/far_fd_floor"]


def test_a_model_that_repeats_its_start_frame_fails_new_views_and_revisits(scores):
    repeat = scores["repeat_start"]
    assert repeat["novel_view/seen_psnr_db"] == pytest.approx(repeat["novel_view/baseline_seen_psnr_db"])
    assert repeat["novel_view/seen_psnr_db"] < repeat["novel_view/warp_seen_psnr_db"]
    for length in ("short", "long"):
        assert repeat[f"revisit/{length}_psnr_db"] < repeat[f"revisit/{length}_warp_psnr_db"]
        # on the places the start frame showed the warp is right (rotations exactly) and repeating is not
        assert repeat[f"revisit/{length}_seen_psnr_db"] < repeat[f"revisit/{length}_warp_seen_psnr_db"] - 2
        # perfectly self-consistent (it never changes), which is why self_psnr is read beside the truth
        assert repeat[f"revisit/{length}_self_psnr_db"] == 100.0
    assert repeat["object_scale/area_ratio"] < 0.8  # the approached object never grows


def test_layout_plausibility_reads_floor_and_sky_against_the_horizon():
    from minwm_env.eval import features
    from minwm_env.eval.generation import layout_plausible
    from minwm_env.world.renderer import WorldRenderer, look_pose
    from minwm_env.world.scenes import make_scene
    renderer = WorldRenderer(make_scene("courtyard", 101), 64, 64)
    poses = np.stack([look_pose(0.2 * k, 0, 0.5, 40 * k, pitch) for k in range(6) for pitch in (-20, 0, 20)])
    frames = np.stack([renderer.render(p) for p in poses])
    intrinsics = renderer.intrinsics
    assert layout_plausible(features.segment(frames), poses, intrinsics).mean() >= 0.9
    # the same frames upside down put the floor in the sky
    assert layout_plausible(features.segment(frames[:, ::-1].copy()), poses, intrinsics).mean() <= 0.2
    renderer.close()
