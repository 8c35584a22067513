"""Flow conventions and samplers against exact, analytic denoisers."""

import pytest
import torch

from minwm_env import flow
from minwm_env.samplers import EulerSampler, FewStepSampler


def test_shifted_few_step_schedule_matches_design():
    sigmas = FewStepSampler().sigmas() * 1000
    torch.testing.assert_close(sigmas, torch.tensor([1000.0, 937.5, 833.3333, 625.0], dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_euler_grid_is_shifted_and_ends_at_zero():
    sigmas = EulerSampler(num_steps=4, shift=3.0).sigmas()
    plain = torch.linspace(1, 0, 5, dtype=torch.float64)
    torch.testing.assert_close(sigmas, 3 * plain / (1 + 2 * plain))
    assert sigmas[0] == 1 and sigmas[-1] == 0


@pytest.mark.parametrize("prediction_type", ["v", "x0"])
def test_conversions_round_trip(prediction_type):
    x0, eps = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    sigma = torch.rand(2, 4) * 0.9 + 0.05  # per frame
    x_t = flow.add_noise(x0, eps, sigma)
    target = flow.training_target(x0, eps, prediction_type)
    torch.testing.assert_close(flow.to_x0(target, x_t, sigma, prediction_type), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flow.to_velocity(target, x_t, sigma, prediction_type), eps - x0, atol=1e-4, rtol=1e-4)


def point_mass_predictor(x_star, prediction_type, calls=None):
    """The exact model for data = {x_star}: x0 = x_star, eps = (x_t - (1 - s) x_star) / s."""
    def predict(x, sigma, with_uncond):
        if calls is not None:
            calls.append(with_uncond)
        eps = (x - (1 - sigma) * x_star) / sigma
        out = eps - x_star if prediction_type == "v" else x_star.expand_as(x)
        return out, (out * 0 if with_uncond else None)
    return predict


@pytest.mark.parametrize("prediction_type", ["v", "x0"])
@pytest.mark.parametrize("sampler", [EulerSampler(num_steps=7, guidance_scale=1.0), FewStepSampler()])
def test_samplers_recover_the_data_point_with_an_exact_model(sampler, prediction_type):
    x_star = torch.randn(1, 2, 3, 4, 4)
    out = sampler.sample(point_mass_predictor(x_star, prediction_type), torch.randn(1, 2, 3, 4, 4), prediction_type)
    torch.testing.assert_close(out, x_star, atol=1e-5, rtol=1e-5)


def test_guidance_combines_branches_and_doubles_evaluations():
    x_star = torch.ones(1, 1, 1, 2, 2)
    calls = []
    sampler = EulerSampler(num_steps=3, guidance_scale=2.0)
    # cond predicts x_star, uncond predicts 0 (in x0 space): guided x0 = 2 * x_star.
    def predict(x, sigma, with_uncond):
        calls.append(with_uncond)
        return x_star.expand_as(x), torch.zeros_like(x)
    out = sampler.sample(predict, torch.randn(1, 1, 1, 2, 2), "x0")
    torch.testing.assert_close(out, 2 * x_star)
    assert calls == [True, True, True]


def test_few_step_renoises_with_the_given_generators():
    x_star = torch.randn(2, 1, 1, 2, 2)
    seen = []
    def predict(x, sigma, with_uncond):
        seen.append(x.clone())
        return x_star, None
    noise = torch.randn(2, 1, 1, 2, 2)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    FewStepSampler().sample(predict, noise, "x0", gens)
    sigma = FewStepSampler().sigmas()[1].item()
    fresh = torch.stack([torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    torch.testing.assert_close(seen[1], (1 - sigma) * x_star + sigma * fresh)


def test_invalid_schedules_raise():
    with pytest.raises(ValueError, match="decrease"):
        FewStepSampler(timesteps=(1000, 1000)).sigmas()
    with pytest.raises(ValueError, match="1000"):
        FewStepSampler(timesteps=(900, 500)).sample(lambda *a: (None, None), torch.zeros(1), "v")
    with pytest.raises(ValueError, match="prediction_type"):
        EulerSampler().sample(lambda *a: (None, None), torch.zeros(1), "eps")
    with pytest.raises(ValueError, match="num_steps"):
        EulerSampler(num_steps=0).sigmas()
