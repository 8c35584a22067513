"""Static shapes in the streaming path (issue 24, item 2): a static cache attends its whole
preallocated buffer under a mask of the valid slots, so every chunk's forwards have the same
shapes and ``torch.compile(dynamic=False)`` captures each kind of forward once. The chunks are
those of the growing-slice cache, up to float rounding; compiled (``aot_eager`` here: no C++
compiler needed) they are those of eager."""

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from conftest import randomize_
from minwm_env.backbones import wan
from minwm_env.conditioning import ConditioningConfig
from minwm_env.generator import StreamingGenerator
from minwm_env.models import build_preset, load_model
from minwm_env.samplers import EulerSampler, FewStepSampler

TOL = dict(atol=1e-5, rtol=1e-5)


def _rollout(model, *, chunks, fold=True, batch=2, window=None, sink=None, sampler=None, restart=None, prompt=True,
             yaws=None, **options):
    """Stream ``chunks`` chunks (turning camera); returns the latents (B, C, frames, h, w), the
    generator and the number of graphs compiled so far after each chunk (``options['graphs']``)."""
    graphs = options.pop("graphs", None)
    sampler = sampler or FewStepSampler(timesteps=(1000.0, 500.0), shift=1.0)
    generator = StreamingGenerator(model, sampler, batch_size=batch, window_frames=window, sink_frames=sink,
                                   **options)
    generator.stream.fold_writes = fold and generator.stream.fold_writes
    image = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prompt = torch.randn(1, 6, model.backbone.text_dim, generator=torch.Generator().manual_seed(9)) if prompt else None
    generator.reset(seed=list(range(batch)), image=image, prompt_embeds=prompt, decode=False)
    yaws = yaws or [4.0] * chunks  # degrees per frame, each chunk
    outs, counts = [], []
    for c in range(chunks):
        actions = torch.zeros(batch, generator.chunk_frames, generator.action_spec.dim)
        if generator.tracks_camera:
            actions[..., 3] = yaws[c]
        if restart is not None and c == restart:  # row 0 restarts: rows out of lockstep from here
            generator.reset_rows([0], [7], image[:1], decode=False)
        outs.append(generator.next_chunk(actions, decode=False).latents)
        counts.append(None if graphs is None else len(graphs))
    return torch.cat(outs, dim=2), generator, counts


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("fold", [True, False])
def test_static_cache_equals_the_growing_slice(preset, fold):
    """Many chunks, well past a full window (tiny: 6 frames = 1.5 chunks; default: its one-frame
    window and restarted context, without a prompt: padded to 512 tokens it is the slow part),
    folded writes on and off, two rows in lockstep."""
    model = load_model("tiny") if preset == "tiny" else build_preset("default")
    randomize_(model.backbone)
    if preset == "tiny":
        options = dict(chunks=5, window=6)
    else:  # one row: the default's forwards are the slow ones here
        options = dict(chunks=3, batch=1, prompt=False, sampler=FewStepSampler(timesteps=(1000.0,), shift=5.0))
    eager, reference, _ = _rollout(model, fold=fold, **options)
    static, stream, _ = _rollout(model, fold=fold, static_shapes=True, **options)
    assert stream.cache.static and not reference.cache.static
    torch.testing.assert_close(static, eager, **TOL)
    assert stream.cache.row_positions == reference.cache.row_positions
    assert stream.stream.num_forwards == reference.stream.num_forwards


def test_static_cache_with_branches_guidance_memory_and_rows_out_of_lockstep():
    """Plücker rays with guidance (two prompt rows per row) and a row restarted mid-stream (a
    per-row mask, no fold); a PRoPE branch with view memory in the cache (a memory-reading mask)."""
    model = build_preset("tiny", conditioning=ConditioningConfig(camera="plucker"), chunk_frames=2)
    randomize_(model.backbone)
    guided = dict(chunks=4, window=3, sink=1, sampler=EulerSampler(num_steps=2, guidance_scale=3.0), restart=2)
    eager, _, _ = _rollout(model, **guided)
    static, _, _ = _rollout(model, **guided, static_shapes=True)
    torch.testing.assert_close(static, eager, **TOL)
    memory = build_preset("tiny", conditioning=ConditioningConfig(camera="prope"), memory_mode="context",
                          memory_frames=8, memory_k=2, chunk_frames=2)
    randomize_(memory.backbone)
    back = dict(chunks=4, batch=1, window=1, sink=1, yaws=[6.0, 6.0, -6.0, -6.0])  # turning back recalls frames
    eager, reference, _ = _rollout(memory, **back)
    static, stream, _ = _rollout(memory, **back, static_shapes=True)
    assert stream.stream.num_memory_writes == reference.stream.num_memory_writes > 0
    torch.testing.assert_close(static, eager, **TOL)


def test_compiled_stream_equals_eager_and_compiles_each_kind_of_forward_once():
    """aot_eager through a backend that counts the graphs it is handed: 2 after the first chunk
    (the start frame's write, the denoising forward), 3 from the second (the folded write +
    denoise forward) and not one more however long the stream runs (measured: 2, 3, 3, ...;
    without static shapes the trial of issue 24 compiled 18 graphs over a short stream). The
    forward is captured whole (``fullgraph=True``: a graph break is an error)."""
    model = load_model("tiny")
    randomize_(model.backbone)
    eager, _, _ = _rollout(model, chunks=7, window=4)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    try:
        compiled, generator, counts = _rollout(model, chunks=7, window=4, compile=counting, graphs=graphs)
    finally:
        wan._COMPILED.pop(counting, None)
        torch._dynamo.reset()
    assert generator.cache.compile is counting
    torch.testing.assert_close(compiled, eager, **TOL)
    assert counts == [2] + [3] * 6, counts  # the window (one chunk) is full from chunk 2: 2..7 add no graph


def test_static_shapes_need_a_backbone_that_has_them():
    model = build_preset("tiny-hy15")
    with pytest.raises(ValueError, match="static cache"):
        model.stream(static_shapes=True)


def test_the_env_takes_compile_and_streams_as_eager():
    import gymnasium as gym
    import numpy as np

    import minwm_env  # noqa: F401

    def steps(**kwargs):
        env = gym.make("minwm/World-v0", model="tiny", obs_mode="latent", num_threads=1, **kwargs)
        env.reset(seed=0)
        out = [env.step(np.array([0, 0, 0.08, 3 * k, 0, 0], np.float32))[0] for k in range(-1, 2)]
        env.close()
        return out

    for eager, compiled in zip(steps(), steps(compile="aot_eager")):
        np.testing.assert_allclose(compiled, eager, **TOL)
