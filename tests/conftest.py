import pytest
import torch

from minwm_env.models import build_preset


@pytest.fixture(scope="session", autouse=True)
def _fp32_and_threads():
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(2)


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
