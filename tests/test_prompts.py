"""Prompts as Wan encodes them (issue 20): Wan has no text mask, so the zero padding after a
prompt's tokens is attended to and its length changes the output. Every real prompt is padded
to the text encoder's length (UMT5: 512), so a prompt gives the same chunk alone or batched
with a longer one, in the env and in training."""

import pytest
import torch

from minwm_env.generator import StreamingGenerator
from minwm_env.models import load_model
from minwm_env.streaming import guidance_prompt, pad_prompts, padded_prompt
from minwm_train.stages.common import prompt_state


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _chunk(model, prompts, seed=0):
    """The first chunk's latents (not decoded) for a batch of prompts, each (L, D), zero-padded to the longest."""
    generator = StreamingGenerator(model, batch_size=len(prompts))
    length = max(p.shape[0] for p in prompts)
    batch = torch.stack([torch.nn.functional.pad(p, (0, 0, 0, length - p.shape[0])) for p in prompts])
    generator.reset(seed=[seed] * len(prompts), prompt_embeds=batch, decode=False)
    return generator.next_chunk(None, decode=False).latents


def test_a_prompt_gives_the_same_chunk_alone_or_beside_a_longer_one(tiny):
    torch.manual_seed(0)
    short, long = torch.randn(3, 32), torch.randn(7, 32)
    alone = _chunk(tiny, [short])
    beside = _chunk(tiny, [short, long])
    torch.testing.assert_close(beside[:1], alone, atol=1e-5, rtol=1e-5)
    # the padding does matter to Wan: the same prompt padded only to its own length differs
    state = tiny.backbone.encode_prompt(short[None])
    padded = tiny.backbone.encode_prompt(padded_prompt(tiny.backbone, short[None]))
    assert state.keys[0].shape[2] == 3 and padded.keys[0].shape[2] == 512
    x = torch.randn(1, 4, 2, 8, 8)
    t = torch.full((1, 2), 700.0)
    with torch.no_grad():
        diff = (tiny.backbone(x, t, torch.tensor([1, 2]), state) - tiny.backbone(x, t, torch.tensor([1, 2]), padded))
    assert diff.abs().max() > 1e-3


def test_training_pads_prompts_as_the_env_streams_them(tiny):
    torch.manual_seed(1)
    prompt = torch.randn(1, 5, 32)
    state = prompt_state(tiny, {"prompt_embeds": prompt}, 1)
    env_state = guidance_prompt(tiny.backbone, [prompt], 1)
    assert state.keys[0].shape == env_state.keys[0].shape and state.keys[0].shape[2] == 512
    torch.testing.assert_close(state.keys[0], env_state.keys[0])


def test_the_null_prompt_stays_one_token_and_equals_the_padded_one(tiny):
    null = guidance_prompt(tiny.backbone, [None], 1)
    assert null.keys[0].shape[2] == 1
    padded = tiny.backbone.encode_prompt(torch.zeros(1, 512, 32))
    x = torch.randn(1, 4, 2, 8, 8)
    t = torch.full((1, 2), 300.0)
    with torch.no_grad():
        a = tiny.backbone(x, t, torch.tensor([1, 2]), null)
        b = tiny.backbone(x, t, torch.tensor([1, 2]), padded)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # beside a real prompt (guidance) it is padded like it
    both = guidance_prompt(tiny.backbone, [torch.randn(1, 4, 32), None], 1)
    assert both.keys[0].shape[2] == 512


def test_a_prompt_longer_than_the_text_encoder_is_refused(tiny):
    with pytest.raises(ValueError, match="513 tokens.*at most 512"):
        guidance_prompt(tiny.backbone, [torch.zeros(1, 513, 32)], 1)
    assert [p.shape[1] for p in pad_prompts([torch.zeros(1, 2, 4), torch.zeros(1, 5, 4)])] == [5, 5]
