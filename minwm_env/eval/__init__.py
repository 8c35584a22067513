"""Evaluation of world models against the ground-truth world (docs/design.md §8); ``minwm-eval``.

    from minwm_env.eval import Evaluator, EvalConfig, ground_truth_like
    truth = ground_truth_like(model_env)                   # same frame size and chunking
    results = Evaluator(model_env, truth, EvalConfig(num_paths=4)).run()

Modules: :mod:`.metrics` (PSNR, SSIM, flicker, loop closure, rotation/direction errors: pure
functions on uint8 frames), :mod:`.motion` (camera motion estimated from frames),
:mod:`.rollout` (model and truth side by side; the ``IgnoreActions`` reference model),
:mod:`.evaluator` (the suites), :mod:`.hardware` (latency/throughput/memory table),
:mod:`.report` (JSON, plots, markdown), :mod:`.cli` (``minwm-eval``).
"""

from .evaluator import DEFINITIONS, SUITES, EvalConfig, Evaluator, commanded_motion, recovery_time
from .metrics import (PSNR_CAP_DB, flicker, flicker_ratio, loop_closure_error, mean_abs_difference, mse, pooled_psnr,
                      psnr, rotation_error_deg, ssim, translation_direction_error_deg)
from .motion import RelativeMotion, estimate_motion, estimate_relative_motion
from .rollout import IgnoreActions, Rollout, ground_truth_like, paired_rollout, rollout

__all__ = ["DEFINITIONS", "EvalConfig", "Evaluator", "IgnoreActions", "PSNR_CAP_DB", "RelativeMotion", "Rollout",
           "SUITES", "commanded_motion", "estimate_motion", "estimate_relative_motion", "flicker", "flicker_ratio",
           "ground_truth_like", "loop_closure_error", "mean_abs_difference", "mse", "paired_rollout", "pooled_psnr",
           "psnr", "recovery_time", "rollout", "rotation_error_deg", "ssim", "translation_direction_error_deg"]
