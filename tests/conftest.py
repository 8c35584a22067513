import os

import pytest
import torch

from minwm_env.models import build_preset


@pytest.fixture(scope="session", autouse=True)
def _fp32_and_threads():
    torch.set_default_dtype(torch.float32)
    # the cores shared among pytest-xdist's workers (scripts/test.sh runs two), at least one each
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))


@pytest.fixture
def tiny_model():
    """The tiny preset (real diffusers classes at tiny size), fresh for each test."""
    return build_preset("tiny", seed=0)


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Give every parameter non-trivial values (zero-initialised layers included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale / max(1, param.shape[-1]) ** 0.5)
    return module
