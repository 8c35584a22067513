"""Gymnasium environments: the world model (``minwm/World-v0``) and the ground truth (``minwm/GroundTruth-v0``)."""
