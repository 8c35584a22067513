"""minwm_train: the pipeline that turns a bidirectional video model into the env's weights.

Stages (one module each in ``minwm_train.stages``): 0 camera-conditioned bidirectional
fine-tune → 1 AR teacher forcing → 2a causal ODE or 2b causal consistency distillation →
3 asymmetric DMD. ``minwm-train`` runs one stage or the whole pipeline.
"""
