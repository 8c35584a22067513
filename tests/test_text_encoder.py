"""String prompts (issue 20): a Wan folder's UMT5 and tokenizer encode them exactly as diffusers'
WanPipeline does, and the env takes them in ``reset(options={"prompt": "..."})``.

The folder is a tiny one written here: the tiny Wan preset (text_dim 32) beside a 2-layer UMT5
with d_model 32 and a T5 tokenizer (Unigram, as UMT5's) over a small vocabulary, all built in
memory, so nothing is downloaded."""

import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

import minwm_env  # noqa: F401
from minwm_env.models import build_preset
from minwm_env.text import WanTextEncoder, clean_prompt, text_encoder_folder

FORWARD = np.array([0, 0, 0.08, 0, 0, 0], dtype=np.float32)
WORDS = ["a", "sunny", "street", "rainy", "road", "&", "cars", "at", "night"]
# whitespace runs, HTML entities escaped twice, unknown words, and one longer than 512 tokens
PROMPTS = ["a sunny street", "  rainy\n road &amp;amp; cars\tat  night ", "a zebra", "", "a " * 600]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    model = build_preset("tiny", seed=0)
    model.save_pretrained(folder)
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
             + [(f"▁{w}", -1.0 - 0.1 * i) for i, w in enumerate(WORDS)] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"])
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(vocab), d_model=model.backbone.text_dim, d_kv=8, d_ff=64, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    UMT5EncoderModel(config).save_pretrained(folder / "text_encoder")
    return folder


@pytest.fixture(scope="module")
def pipeline(folder):
    """diffusers' own pipeline on the folder's encoder and tokenizer, loaded on its own."""
    return WanPipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                       text_encoder=UMT5EncoderModel.from_pretrained(folder / "text_encoder"),
                       vae=None, scheduler=FlowMatchEulerDiscreteScheduler(), transformer=None)


def test_embeddings_equal_wan_pipelines(folder, pipeline):
    encoder = WanTextEncoder.from_pretrained(folder)
    ours = encoder.encode(PROMPTS)
    assert ours.shape == (len(PROMPTS), 512, 32) and ours.dtype == torch.float32
    with torch.no_grad():  # as WanPipeline.__call__ runs it
        theirs = pipeline._get_t5_prompt_embeds(PROMPTS, max_sequence_length=512, device="cpu")
        encoded, negative = pipeline.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False,
                                                   max_sequence_length=512, device="cpu")
    assert torch.equal(ours, theirs)
    assert negative is None and torch.equal(encoder.encode(PROMPTS[0]), encoded)
    # what they are: real states up to each prompt's end-of-sequence token, zeros after it
    tokens = [len(pipeline.tokenizer(clean_prompt(p)).input_ids) for p in PROMPTS[:4]]
    assert tokens == [4, 7, 8, 1]  # "a zebra": ▁a, ▁, z, e, b, r, a, </s>
    for row, length in enumerate(tokens + [512]):
        assert ours[row, :length].abs().sum(-1).gt(0).all() and not ours[row, length:].any()
    assert clean_prompt(PROMPTS[1]) == "rainy road & cars at night"


def test_string_prompt_in_the_env_equals_its_embeddings(folder):
    embeds = WanTextEncoder.from_pretrained(folder).encode("a sunny street")[0]  # (512, 32)
    env = gym.make("minwm/World-v0", model=str(folder), obs_mode="latent")

    def first_step(prompt):
        env.reset(seed=0, options={"prompt": prompt})
        return env.step(FORWARD)[0]

    by_text = first_step("a sunny street")
    assert np.array_equal(first_step(embeds), by_text)
    assert np.array_equal(first_step("a sunny street"), by_text)
    assert not np.allclose(first_step("a rainy road"), by_text, atol=1e-4)  # the text is what moves it
    prompts = env.unwrapped._world.prompts
    assert list(prompts.cache) == ["a sunny street", "a rainy road"]  # each encoded once

    # bad prompts raise before anything changes: the episode goes on as it would have
    env.reset(seed=0, options={"prompt": "a sunny street"})
    for bad, error in [(["a sunny street"], TypeError), (np.zeros((3, 7), np.float32), ValueError)]:
        with pytest.raises(error):
            env.reset(options={"prompt": bad})
    assert np.array_equal(env.step(FORWARD)[0], by_text)
    env.close()

    venv = gym.make_vec("minwm/World-v0", num_envs=2, vectorization_mode="vector_entry_point", model=str(folder),
                        obs_mode="latent")
    venv.reset(seed=0, options={"prompt": "a sunny street"})  # one prompt for both rows
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"prompt": "a rainy road", "reset_mask": np.array([True, False])})
    np.testing.assert_allclose(venv.step(np.stack([FORWARD] * 2))[0][0], by_text, atol=1e-5)
    venv.close()


def test_guidance_gets_the_encoded_empty_prompt_as_its_negative_as_wan_pipeline_does(folder, pipeline):
    from minwm_env.samplers import EulerSampler

    encoder = WanTextEncoder.from_pretrained(folder)
    with torch.no_grad():
        _, negative = pipeline.encode_prompt("a sunny street", negative_prompt=None, do_classifier_free_guidance=True,
                                             max_sequence_length=512, device="cpu")
    assert torch.equal(negative, encoder.encode(""))  # WanPipeline's default negative prompt is ""
    env = gym.make("minwm/World-v0", model=str(folder), obs_mode="latent",
                   sampler=EulerSampler(num_steps=2, shift=5.0, guidance_scale=3.0))

    def first_step(options):
        env.reset(seed=0, options=options)
        return env.step(FORWARD)[0]

    by_text = first_step({"prompt": "a sunny street"})
    embeds = encoder.encode("a sunny street")[0]
    assert np.array_equal(first_step({"prompt": embeds, "negative_prompt": encoder.encode("")[0]}), by_text)
    assert not np.allclose(first_step({"prompt": embeds}), by_text, atol=1e-5)  # zeros are not the empty prompt
    other = first_step({"prompt": "a sunny street", "negative_prompt": "a rainy road"})
    assert np.array_equal(first_step({"prompt": embeds, "negative_prompt": encoder.encode("a rainy road")[0]}), other)
    assert not np.allclose(other, by_text, atol=1e-5)
    env.close()


def test_a_model_without_a_text_encoder_says_what_is_needed(folder, tmp_path):
    env = gym.make("minwm/World-v0", model="tiny")
    env.reset(seed=0)
    expected = gym.make("minwm/World-v0", model="tiny")
    expected.reset(seed=0)
    with pytest.raises(ValueError, match=r"'tiny' is a preset.*text_encoder/.*tokenizer/.*minwm\[text\]"):
        env.reset(options={"prompt": "a sunny street"})
    assert np.array_equal(env.step(FORWARD)[0], expected.step(FORWARD)[0])  # the episode went on untouched

    with pytest.raises(ValueError, match=r"minwm-default.* has no text_encoder/ and no tokenizer/"):
        text_encoder_folder("minwm-default")  # the shipped default: a folder, without them

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(folder, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(ValueError, match=rf"{no_tokenizer} has no tokenizer/ subfolder"):
        WanTextEncoder.from_pretrained(no_tokenizer)
    env = gym.make("minwm/World-v0", model=str(no_tokenizer))
    with pytest.raises(ValueError, match=rf"{no_tokenizer} has no tokenizer/ subfolder"):
        env.reset(seed=0, options={"prompt": "a sunny street"})
    (no_tokenizer / "tokenizer").symlink_to(folder / "tokenizer")  # as README links a base's into a converted folder
    env.reset(seed=0, options={"prompt": "a sunny street"})
    assert list(env.unwrapped._world.prompts.cache) == ["a sunny street"]

    env = gym.make("minwm/World-v0", model=build_preset("tiny"))  # a loaded model: no folder to look in
    with pytest.raises(ValueError, match=r"loaded WorldModel.*pass that folder as model="):
        env.reset(seed=0, options={"prompt": "a sunny street"})


def test_without_transformers_the_error_names_the_extra(folder, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(ImportError, match=r'pip install "minwm\[text\]"'):
        WanTextEncoder.from_pretrained(folder)
