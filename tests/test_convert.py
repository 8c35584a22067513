"""Converters for minWM's released checkpoints (issue 20), at the tiny size with no download.

A synthetic checkpoint is written in minWM's own layout from one of our tiny models by the
inverse key map (written here independently of minwm_env.convert's tables), its key set is
checked against the key set minWM's module definitions give that architecture, it is
converted, and the converted model must compute what the original computes. Independent
references of minWM's own formulas (its Wan forward, the HunyuanVideo-1.5 double block, token
refiner block, final layer and action embedder), evaluated on the minWM-format weights, check
the meaning of the mapping and not only that it inverts. Bad inputs give errors naming the
problem.
"""

import json
import math
import shutil

import gymnasium as gym
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from conftest import randomize_
from diffusers import HunyuanVideo15Transformer3DModel, WanTransformer3DModel

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env import camera as cam
from minwm_env.backbones import CausalHunyuan15
from minwm_env.conditioning import ActionSpec, ConditioningConfig, FrameConditions
from minwm_env.convert import (PROVENANCE_FILE, ConversionError, convert_minwm, main, minwm_action_spec,
                               read_minwm_checkpoint)
from minwm_env.conditioning import minwm_action_labels
from minwm_env.pose_strings import KEY_DELTAS
from minwm_env.models import PRESETS, ModelSettings, WorldModel, build_preset, load_model

TINY_SETTINGS = {"height": 64, "width": 64}


# ---------------------------------------------------------------------------------------------
# minWM's key sets, from its module definitions
# ---------------------------------------------------------------------------------------------

def _wb(*names):
    return [f"{n}.{p}" for n in names for p in ("weight", "bias")]


def minwm_wan_keys(num_layers: int) -> set[str]:
    """WanDiffusionWrapper(use_camera=True) around CausalWanModel (t2v, qk_norm, cross_attn_norm):
    Wan21/wan/modules/causal_model.py, model.py, prope.py add_prope_parameters."""
    top = _wb("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
              "time_projection.1", "head.head") + ["head.modulation"]
    block = (_wb("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "norm3", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2", "self_attn.prope_o")
             + ["self_attn.norm_q.weight", "self_attn.norm_k.weight", "cross_attn.norm_q.weight",
                "cross_attn.norm_k.weight", "modulation"])
    return {f"model.{k}" for k in top} | {f"model.blocks.{i}.{k}" for i in range(num_layers) for k in block}


def minwm_hy15_keys(num_layers: int, action: bool) -> set[str]:
    """ARHunyuanVideo_1_5_DiffusionTransformer (glyph_byT5_v2, vision_projection='linear',
    use_cond_type_embedding, qkv_bias, rms qk norm) + add_prope_parameters (+
    add_discrete_action_parameters): HY15/trainer/models/hyvideo/transformer/."""
    keys = set(_wb("img_in.proj", "byt5_in.layernorm", "byt5_in.fc1", "byt5_in.fc2", "byt5_in.fc3",
                   "vision_in.proj.0", "vision_in.proj.1", "vision_in.proj.3", "vision_in.proj.4",
                   "txt_in.input_embedder", "txt_in.t_embedder.mlp.0", "txt_in.t_embedder.mlp.2",
                   "txt_in.c_embedder.linear_1", "txt_in.c_embedder.linear_2", "time_in.mlp.0", "time_in.mlp.2",
                   "final_layer.linear", "final_layer.adaLN_modulation.1"))
    keys.add("cond_type_embedding.weight")
    for i in range(2):  # SingleTokenRefiner(depth=2), fixed in minWM's constructor
        keys |= {f"txt_in.individual_token_refiner.blocks.{i}.{k}"
                 for k in _wb("norm1", "self_attn_qkv", "self_attn_proj", "norm2", "mlp.fc1", "mlp.fc2",
                              "adaLN_modulation.1")}
    for i in range(num_layers):
        keys |= {f"double_blocks.{i}.{k}" for k in
                 _wb("img_mod.linear", "img_attn_q", "img_attn_k", "img_attn_v", "img_attn_proj", "img_mlp.fc1",
                     "img_mlp.fc2", "txt_mod.linear", "txt_attn_q", "txt_attn_k", "txt_attn_v", "txt_attn_proj",
                     "txt_mlp.fc1", "txt_mlp.fc2", "img_attn_prope_proj")
                 + ["img_attn_q_norm.weight", "img_attn_k_norm.weight", "txt_attn_q_norm.weight",
                    "txt_attn_k_norm.weight"]}
    if action:
        keys |= set(_wb("action_in.mlp.0", "action_in.mlp.2"))
    return keys


# ---------------------------------------------------------------------------------------------
# Our tiny models → minWM's layout (the inverse map, written out here on its own)
# ---------------------------------------------------------------------------------------------

def tiny_wan() -> WorldModel:
    model = build_preset("tiny", conditioning=ConditioningConfig(camera="prope"), **TINY_SETTINGS)
    randomize_(model.backbone.transformer, seed=1)
    randomize_(model.backbone.conditioning, seed=2, scale=2.0)
    return model


def to_minwm_wan(model: WorldModel) -> dict[str, torch.Tensor]:
    t = model.backbone.transformer.state_dict()
    c = model.backbone.conditioning.state_dict()
    out = {}

    def put(minwm, ours, source=t):
        for p in ("weight", "bias"):
            out[f"model.{minwm}.{p}"] = source[f"{ours}.{p}"].clone()

    put("patch_embedding", "patch_embedding")
    put("text_embedding.0", "condition_embedder.text_embedder.linear_1")
    put("text_embedding.2", "condition_embedder.text_embedder.linear_2")
    put("time_embedding.0", "condition_embedder.time_embedder.linear_1")
    put("time_embedding.2", "condition_embedder.time_embedder.linear_2")
    put("time_projection.1", "condition_embedder.time_proj")
    put("head.head", "proj_out")
    out["model.head.modulation"] = t["scale_shift_table"].clone()
    for i in range(model.backbone.num_layers):
        b = f"blocks.{i}"
        for attn, ours in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            for name, our_name in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
                put(f"{b}.{attn}.{name}", f"{b}.{ours}.{our_name}")
            for norm in ("norm_q", "norm_k"):
                out[f"model.{b}.{attn}.{norm}.weight"] = t[f"{b}.{ours}.{norm}.weight"].clone()
        put(f"{b}.norm3", f"{b}.norm2")  # minWM's norm before cross-attention is diffusers' norm2
        put(f"{b}.ffn.0", f"{b}.ffn.net.0.proj")
        put(f"{b}.ffn.2", f"{b}.ffn.net.2")
        out[f"model.{b}.modulation"] = t[f"{b}.scale_shift_table"].clone()
        put(f"{b}.self_attn.prope_o", f"prope_out.{i}", c)
    return out


def sinusoid(labels: torch.Tensor, width: int = 256) -> torch.Tensor:
    """GLIDE's timestep embedding, as minWM's TimestepEmbedder computes it: [cos | sin], period 10⁴."""
    half = width // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = labels.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def tiny_hy15(action: bool = True) -> tuple[WorldModel, dict[str, torch.Tensor]]:
    """tiny-hy15 at minWM's fixed widths (token refiner depth 2, ByT5 1472), with PRoPE and
    (optionally) a discrete 81-label action branch whose first layer is what a minWM action_in
    gives (returned: the action_in weights it came from)."""
    preset = PRESETS["tiny-hy15"]
    generator = torch.Generator().manual_seed(3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = HunyuanVideo15Transformer3DModel(**{**preset.transformer, "num_refiner_layers": 2,
                                                          "text_embed_2_dim": 1472})
        hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        conditioning = ConditioningConfig(camera="prope", action_spec=minwm_action_spec() if action else None,
                                          action_hidden_dim=hidden)
        backbone = CausalHunyuan15(transformer, "v", conditioning)
    codec = build_preset("tiny-hy15").codec
    randomize_(transformer, seed=4)
    randomize_(backbone.conditioning, seed=5, scale=2.0)
    action_in = {}
    if action:
        action_in = {"action_in.mlp.0.weight": torch.randn(hidden, 256, generator=generator) * 0.1,
                     "action_in.mlp.0.bias": torch.randn(hidden, generator=generator) * 0.1,
                     "action_in.mlp.2.weight": backbone.conditioning.action_mlp[2].weight.detach().clone(),
                     "action_in.mlp.2.bias": backbone.conditioning.action_mlp[2].bias.detach().clone()}
        table = (sinusoid(torch.arange(81)).double() @ action_in["action_in.mlp.0.weight"].double().T
                 + action_in["action_in.mlp.0.bias"].double())
        with torch.no_grad():
            backbone.conditioning.action_mlp[0].weight.copy_(table.T.float())
            backbone.conditioning.action_mlp[0].bias.zero_()
    return WorldModel(backbone, codec, ModelSettings(**TINY_SETTINGS)).eval(), action_in


def to_minwm_hy15(model: WorldModel, action_in: dict) -> tuple[dict[str, torch.Tensor], dict]:
    t = model.backbone.transformer.state_dict()
    c = model.backbone.conditioning.state_dict()
    config = model.backbone.transformer.config
    out = {}

    def put(minwm, ours, params=("weight", "bias"), source=t):
        for p in params:
            out[f"{minwm}.{p}"] = source[f"{ours}.{p}"].clone()

    put("img_in.proj", "x_embedder.proj")
    put("time_in.mlp.0", "time_embed.timestep_embedder.linear_1")
    put("time_in.mlp.2", "time_embed.timestep_embedder.linear_2")
    put("txt_in.input_embedder", "context_embedder.proj_in")
    put("txt_in.t_embedder.mlp.0", "context_embedder.time_text_embed.timestep_embedder.linear_1")
    put("txt_in.t_embedder.mlp.2", "context_embedder.time_text_embed.timestep_embedder.linear_2")
    put("txt_in.c_embedder.linear_1", "context_embedder.time_text_embed.text_embedder.linear_1")
    put("txt_in.c_embedder.linear_2", "context_embedder.time_text_embed.text_embedder.linear_2")
    for i in range(2):
        ours = f"context_embedder.token_refiner.refiner_blocks.{i}"
        minwm = f"txt_in.individual_token_refiner.blocks.{i}"
        for p in ("weight", "bias"):
            out[f"{minwm}.self_attn_qkv.{p}"] = torch.cat([t[f"{ours}.attn.to_{n}.{p}"] for n in "qkv"])
        put(f"{minwm}.norm1", f"{ours}.norm1")
        put(f"{minwm}.norm2", f"{ours}.norm2")
        put(f"{minwm}.self_attn_proj", f"{ours}.attn.to_out.0")
        put(f"{minwm}.mlp.fc1", f"{ours}.ff.net.0.proj")
        put(f"{minwm}.mlp.fc2", f"{ours}.ff.net.2")
        put(f"{minwm}.adaLN_modulation.1", f"{ours}.norm_out.linear")
    put("byt5_in.layernorm", "context_embedder_2.norm")
    for n in (1, 2, 3):
        put(f"byt5_in.fc{n}", f"context_embedder_2.linear_{n}")
    put("vision_in.proj.0", "image_embedder.norm_in")
    put("vision_in.proj.1", "image_embedder.linear_1")
    put("vision_in.proj.3", "image_embedder.linear_2")
    put("vision_in.proj.4", "image_embedder.norm_out")
    out["cond_type_embedding.weight"] = t["cond_type_embed.weight"].clone()
    for i in range(config.num_layers):
        ours, minwm = f"transformer_blocks.{i}", f"double_blocks.{i}"
        put(f"{minwm}.img_mod.linear", f"{ours}.norm1.linear")
        put(f"{minwm}.txt_mod.linear", f"{ours}.norm1_context.linear")
        for n in "qkv":
            put(f"{minwm}.img_attn_{n}", f"{ours}.attn.to_{n}")
            put(f"{minwm}.txt_attn_{n}", f"{ours}.attn.add_{n}_proj")
        put(f"{minwm}.img_attn_proj", f"{ours}.attn.to_out.0")
        put(f"{minwm}.txt_attn_proj", f"{ours}.attn.to_add_out")
        put(f"{minwm}.img_attn_q_norm", f"{ours}.attn.norm_q", ("weight",))
        put(f"{minwm}.img_attn_k_norm", f"{ours}.attn.norm_k", ("weight",))
        put(f"{minwm}.txt_attn_q_norm", f"{ours}.attn.norm_added_q", ("weight",))
        put(f"{minwm}.txt_attn_k_norm", f"{ours}.attn.norm_added_k", ("weight",))
        put(f"{minwm}.img_mlp.fc1", f"{ours}.ff.net.0.proj")
        put(f"{minwm}.img_mlp.fc2", f"{ours}.ff.net.2")
        put(f"{minwm}.txt_mlp.fc1", f"{ours}.ff_context.net.0.proj")
        put(f"{minwm}.txt_mlp.fc2", f"{ours}.ff_context.net.2")
        put(f"{minwm}.img_attn_prope_proj", f"prope_out.{i}", source=c)
    put("final_layer.linear", "proj_out")
    for p in ("weight", "bias"):  # diffusers' (scale, shift) is Tencent's (shift, scale)
        scale, shift = t[f"norm_out.linear.{p}"].chunk(2)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale])
    out.update({k: v.clone() for k, v in action_in.items()})
    heads, head_dim = config.num_attention_heads, config.attention_head_dim
    minwm_config = {
        "_class_name": "HunyuanVideo_1_5_DiffusionTransformer", "patch_size": [1, 1, 1],
        "in_channels": config.out_channels, "concat_condition": True, "out_channels": config.out_channels,
        "hidden_size": heads * head_dim, "heads_num": heads, "mlp_width_ratio": config.mlp_ratio,
        "mlp_act_type": "gelu_tanh", "mm_double_blocks_depth": config.num_layers, "mm_single_blocks_depth": 0,
        "rope_dim_list": list(config.rope_axes_dim), "qkv_bias": True, "qk_norm": True, "qk_norm_type": "rms",
        "guidance_embed": False, "use_meanflow": False, "text_projection": "single_refiner", "use_attention_mask": True,
        "text_states_dim": config.text_embed_dim, "text_states_dim_2": None, "text_pool_type": None,
        "rope_theta": 256, "attn_mode": "flash", "attn_param": None, "glyph_byT5_v2": True,
        "vision_projection": "linear", "vision_states_dim": config.image_embed_dim,
        "is_reshape_temporal_channels": False, "use_cond_type_embedding": True, "ideal_resolution": "480p",
        "ideal_task": "i2v"}
    return out, minwm_config


def write_hy15_checkpoint(folder, state, config):
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# ---------------------------------------------------------------------------------------------
# Shared fixtures: one Wan and one HunyuanVideo-1.5 conversion per module
# ---------------------------------------------------------------------------------------------

def _conditions(batch, frames, generator, actions=None):
    deltas = torch.randn(batch, frames - 1, 6, generator=generator, dtype=torch.float64) * torch.tensor(
        [0.05, 0.05, 0.05, 3.0, 3.0, 1.0], dtype=torch.float64)
    w2c = cam.invert_pose(cam.compose_deltas(deltas)).float()
    intrinsics = torch.tensor([0.9, 0.7, 0.5, 0.5]).expand(batch, frames, 4)
    return FrameConditions(w2c, intrinsics, actions)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    model = tiny_wan()
    model.save_pretrained(root / "base")  # the base folder: transformer config + VAE
    state = to_minwm_wan(model)
    torch.save({"generator_ema": state}, root / "model.pt")
    report = convert_minwm(root / "model.pt", root / "out", base=root / "base", settings=TINY_SETTINGS)
    return {"root": root, "model": model, "state": state, "report": report, "out": root / "out"}


@pytest.fixture(scope="module")
def hy15(tmp_path_factory):
    root = tmp_path_factory.mktemp("hy15")
    model, action_in = tiny_hy15(action=True)
    model.save_pretrained(root / "base")
    state, config = to_minwm_hy15(model, action_in)
    write_hy15_checkpoint(root / "ckpt", state, config)
    report = convert_minwm(root / "ckpt", root / "out", base=root / "base", settings=TINY_SETTINGS)
    return {"root": root, "model": model, "state": state, "config": config, "action_in": action_in,
            "report": report, "out": root / "out"}


# ---------------------------------------------------------------------------------------------
# Wan2.1
# ---------------------------------------------------------------------------------------------

def test_wan_checkpoint_has_minwms_exact_key_set(wan):
    assert set(wan["state"]) == minwm_wan_keys(PRESETS["tiny"].transformer["num_layers"])
    assert wan["report"].family == "wan" and wan["report"].chosen_entry == "generator_ema"


def test_wan_round_trip_is_exact_and_carries_minwms_settings(wan):
    original, converted = wan["model"], load_model(wan["out"])
    a, b = original.backbone.transformer.state_dict(), converted.backbone.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = original.backbone.conditioning.state_dict(), converted.backbone.conditioning.state_dict()
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert converted.backbone.conditioning_config.camera == "prope"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, generator=generator)
    conditions = _conditions(1, 3, generator)
    prompt = torch.randn(1, 7, 32, generator=generator)
    with torch.no_grad():
        outs = [m.backbone(x, torch.tensor([[900.0, 900.0, 900.0]]), torch.arange(3), m.backbone.encode_prompt(prompt),
                           conditions=conditions) for m in (original, converted)]
    assert torch.equal(outs[0], outs[1])
    s = converted.settings
    assert (s.prediction_type, s.chunk_frames, s.window_frames, s.sink_frames, s.shift) == ("v", 4, 16, 0, 5.0)
    assert s.sampler_timesteps == (1000.0, 750.0, 500.0, 250.0) and s.intrinsics == (0.5, 0.5, 0.5, 0.5)
    provenance = json.loads((wan["out"] / PROVENANCE_FILE).read_text())
    assert provenance["family"] == "wan" and "few-step" in provenance["minwm_inference"]["sampler"]


def minwm_wan_forward(sd, x, t, context, w2c, intrinsics, heads):
    """minWM's Wan forward, full attention, with its PRoPE branch, from its own weights
    (Wan21/wan/modules/model.py WanModel, causal_model.py, prope.py), in float32/64."""
    def g(k):
        return sd[f"model.{k}"]

    def lin(v, k):
        return F.linear(v, g(f"{k}.weight"), g(f"{k}.bias"))

    def rms(v, k):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * g(f"{k}.weight")

    def ln(v, k=None):
        return F.layer_norm(v, v.shape[-1:], None if k is None else g(f"{k}.weight"),
                            None if k is None else g(f"{k}.bias"), eps=1e-6)

    batch, _, frames, height, width = x.shape
    h = F.conv3d(x, g("patch_embedding.weight"), g("patch_embedding.bias"), stride=(1, 2, 2))
    dim, gh, gw = h.shape[1], h.shape[3], h.shape[4]
    h = h.flatten(2).transpose(1, 2)
    half = g("time_embedding.0.weight").shape[1] // 2
    angles = torch.outer(t.double(), torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half))
    e = lin(F.silu(lin(torch.cat([angles.cos(), angles.sin()], 1).float(), "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").unflatten(1, (6, dim))
    ctx = lin(F.gelu(lin(context, "text_embedding.0"), approximate="tanh"), "text_embedding.2")
    # rotary: complex pairs; time gets d - 4(d//6) channels, height and width 2(d//6) each
    d = dim // heads

    def table(n):
        return torch.polar(torch.ones(1024, n // 2, dtype=torch.float64),
                           torch.outer(torch.arange(1024, dtype=torch.float64),
                                       1.0 / 10000.0 ** (torch.arange(0, n, 2, dtype=torch.float64) / n)))

    ft, fh, fw = table(d - 4 * (d // 6)), table(2 * (d // 6)), table(2 * (d // 6))
    grid = (frames, gh, gw, -1)
    freqs = torch.cat([ft[:frames, None, None].expand(grid), fh[None, :gh, None].expand(grid),
                       fw[None, None, :gw].expand(grid)], -1).reshape(-1, 1, d // 2)

    def rope(v):  # (B, L, n, d)
        c = torch.view_as_complex(v.double().reshape(*v.shape[:-1], -1, 2))
        return torch.view_as_real(c * freqs).flatten(-2).float()

    # PRoPE: P = lift(diag(fx, fy, 1)) · w2c per frame, applied to 4-blocks of every head
    k_mat = torch.zeros(batch, frames, 4, 4, dtype=torch.float64)
    k_mat[..., 0, 0], k_mat[..., 1, 1], k_mat[..., 2, 2], k_mat[..., 3, 3] = intrinsics[..., 0].double(), \
        intrinsics[..., 1].double(), 1, 1
    proj = k_mat @ w2c.double()
    proj_inv = torch.linalg.inv(proj)
    tokens = gh * gw

    def blocks4(v, m):  # v (B, L, n, d), m (B, F, 4, 4) → each 4-block ↦ m_f · block
        vb = v.reshape(batch, frames, tokens, heads, d // 4, 4).double()
        return torch.einsum("bfij,bftnkj->bftnki", m, vb).reshape(v.shape).float()

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) \
            .transpose(1, 2).flatten(2)

    layers = len({k.split(".")[2] for k in sd if k.startswith("model.blocks.")})
    for i in range(layers):
        b = f"blocks.{i}"
        mod = (g(f"{b}.modulation") + e0).chunk(6, dim=1)
        y = ln(h) * (1 + mod[1]) + mod[0]
        q = rms(lin(y, f"{b}.self_attn.q"), f"{b}.self_attn.norm_q").unflatten(2, (heads, d))
        k = rms(lin(y, f"{b}.self_attn.k"), f"{b}.self_attn.norm_k").unflatten(2, (heads, d))
        v = lin(y, f"{b}.self_attn.v").unflatten(2, (heads, d))
        out = lin(attend(rope(q), rope(k), v), f"{b}.self_attn.o")
        camera_out = attend(blocks4(q, proj.transpose(-1, -2)), blocks4(k, proj_inv), blocks4(v, proj_inv))
        out = out + lin(blocks4(camera_out.unflatten(2, (heads, d)), proj).flatten(2), f"{b}.self_attn.prope_o")
        h = h + out * mod[2]
        y = ln(h, f"{b}.norm3")
        q = rms(lin(y, f"{b}.cross_attn.q"), f"{b}.cross_attn.norm_q").unflatten(2, (heads, d))
        k = rms(lin(ctx, f"{b}.cross_attn.k"), f"{b}.cross_attn.norm_k").unflatten(2, (heads, d))
        v = lin(ctx, f"{b}.cross_attn.v").unflatten(2, (heads, d))
        h = h + lin(attend(q, k, v), f"{b}.cross_attn.o")
        y = lin(F.gelu(lin(ln(h) * (1 + mod[4]) + mod[3], f"{b}.ffn.0"), approximate="tanh"), f"{b}.ffn.2")
        h = h + y * mod[5]
    head = (g("head.modulation") + e[:, None]).chunk(2, dim=1)
    h = lin(ln(h) * (1 + head[1]) + head[0], "head.head")  # (B, L, 1·2·2·C)
    h = h.reshape(batch, frames, gh, gw, 1, 2, 2, -1)
    return torch.einsum("bfhwpqrc->bcfphqwr", h).reshape(batch, -1, frames, height, width)


def test_converted_wan_computes_minwms_forward(wan):
    """The meaning of the Wan map (norm2/norm3, modulations, PRoPE's prope_o): minWM's own
    forward on its own weights equals our converted model's full-attention forward."""
    converted = load_model(wan["out"])
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 8, 8, generator=generator)
    context = torch.randn(2, 6, 32, generator=generator)
    conditions = _conditions(2, 3, generator)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        prompt = converted.backbone.encode_prompt(context)
        ours = converted.backbone(x, t[:, None].expand(2, 3), torch.arange(3), prompt, conditions=conditions)
        theirs = minwm_wan_forward(wan["state"], x, t, context, conditions.w2c, conditions.intrinsics, heads=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_converted_wan_runs_in_the_env(wan):
    env = gym.make("minwm/World-v0", model=str(wan["out"]))
    obs, _ = env.reset(seed=0)
    step = np.zeros(env.action_space.shape, np.float32)
    step[..., 2] = 0.08  # forward, minWM's "w"
    obs, *_ = env.step(step)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8


def test_the_base_text_encoder_and_tokenizer_are_linked_not_copied(wan, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(wan["root"] / "base", base)
    for part in ("text_encoder", "tokenizer"):
        (base / part).mkdir()
        (base / part / "config.json").write_text(f'{{"part": "{part}"}}')
    report = convert_minwm(wan["root"] / "model.pt", tmp_path / "out", base=base, settings=TINY_SETTINGS)
    for part in ("text_encoder", "tokenizer"):
        link = tmp_path / "out" / part
        assert link.is_symlink() and link.resolve() == (base / part).resolve()
        assert json.loads((link / "config.json").read_text()) == {"part": part}
    assert any("linked the base's text_encoder, tokenizer" in note for note in report.notes)
    assert not (wan["out"] / "text_encoder").exists()  # a base without them: nothing linked


def test_fsdp_wrapped_keys_and_the_raw_generator_entry_convert_alike(wan, tmp_path):
    wrapped = {k.replace("model.", "model._fsdp_wrapped_module.", 1): v for k, v in wan["state"].items()}
    torch.save({"generator": wrapped}, tmp_path / "model.pt")
    report = convert_minwm(tmp_path / "model.pt", tmp_path / "out", family="wan", base=wan["root"] / "base",
                           settings=TINY_SETTINGS)
    assert report.chosen_entry == "generator" and any("_fsdp_wrapped_module" in n for n in report.notes)
    a = load_model(wan["out"]).backbone.transformer.state_dict()
    b = load_model(tmp_path / "out").backbone.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# HunyuanVideo-1.5
# ---------------------------------------------------------------------------------------------

def test_hy15_checkpoint_has_minwms_exact_key_set(hy15):
    assert set(hy15["state"]) == minwm_hy15_keys(PRESETS["tiny-hy15"].transformer["num_layers"], action=True)
    assert hy15["report"].family == "hunyuan15"


def _hy_prompt(backbone, generator):
    return backbone.encode_prompt(torch.randn(1, 5, 32, generator=generator),
                                  torch.tensor([[1, 1, 1, 1, 0]]),
                                  byt5_embeds=torch.randn(1, 3, 1472, generator=generator),
                                  byt5_mask=torch.tensor([[1, 1, 0]]),
                                  image_embeds=torch.randn(1, 4, 32, generator=generator))


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_hy15_round_trip_is_exact_with_prope_and_discrete_actions(hy15):
    original, converted = hy15["model"], load_model(hy15["out"])
    assert isinstance(converted.backbone, CausalHunyuan15)
    a, b = original.backbone.transformer.state_dict(), converted.backbone.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("num_layers", "num_refiner_layers", "in_channels", "out_channels", "rope_axes_dim", "mlp_ratio",
                "text_embed_dim", "text_embed_2_dim", "image_embed_dim", "task_type", "patch_size"):
        configs = (converted.backbone.transformer.config, original.backbone.transformer.config)
        assert _plain(configs[0][key]) == _plain(configs[1][key]), key
    ca, cb = original.backbone.conditioning.state_dict(), converted.backbone.conditioning.state_dict()
    assert ca.keys() == cb.keys()
    for key in ca:  # the action table is recomputed in float64: equal up to float32 rounding
        torch.testing.assert_close(ca[key], cb[key], rtol=1e-6, atol=1e-6)
    assert converted.backbone.conditioning_config.action_spec == minwm_action_spec()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 3, 8, 8, generator=generator)
    conditions = _conditions(1, 3, generator, actions=torch.tensor([[[0.0], [10.0], [37.0]]]))
    with torch.no_grad():
        outs = [m.backbone(x, torch.tensor([[0.0, 800.0, 800.0]]), torch.arange(3),
                           _hy_prompt(m.backbone, torch.Generator().manual_seed(5)), conditions=conditions)
                for m in (original, converted)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    s = converted.settings
    assert s.intrinsics == (0.5050505, 0.89786756, 0.5, 0.5) and s.chunk_frames == 4 and s.prediction_type == "v"
    provenance = json.loads((hy15["out"] / PROVENANCE_FILE).read_text())
    assert "EulerSampler(num_steps=4" in provenance["minwm_inference"]["sampler"]


def test_hy15_map_means_what_minwms_modules_compute(hy15):
    """Independent references of minWM's formulas on the minWM-format weights: a double block
    (img_*/txt_* streams, modulation order, qk norms), a token-refiner block (the fused q/k/v
    split, the gates), the final layer (shift before scale) and action_in (a timestep embedder
    of the label)."""
    sd, transformer = hy15["state"], load_model(hy15["out"]).backbone.transformer
    generator = torch.Generator().manual_seed(7)
    heads, dim = 2, 32

    def lin(v, k):
        return F.linear(v, sd[f"{k}.weight"], sd[f"{k}.bias"])

    def rms(v, k):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * sd[f"{k}.weight"]

    def ln(v):
        return F.layer_norm(v, v.shape[-1:], eps=1e-6)

    def joint(qs, ks, vs):
        q, k, v = (torch.cat(t, 1).transpose(1, 2) for t in (qs, ks, vs))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    # a double block, no rotary, no mask
    img, txt = torch.randn(2, 6, dim, generator=generator), torch.randn(2, 4, dim, generator=generator)
    vec = torch.randn(2, dim, generator=generator)
    b = "double_blocks.1"
    im = lin(F.silu(vec), f"{b}.img_mod.linear")[:, None].chunk(6, dim=-1)
    tm = lin(F.silu(vec), f"{b}.txt_mod.linear")[:, None].chunk(6, dim=-1)
    xi, xt = ln(img) * (1 + im[1]) + im[0], ln(txt) * (1 + tm[1]) + tm[0]
    qkv = [[rms(lin(x, f"{b}.{s}_attn_q").unflatten(2, (heads, -1)), f"{b}.{s}_attn_q_norm"),
            rms(lin(x, f"{b}.{s}_attn_k").unflatten(2, (heads, -1)), f"{b}.{s}_attn_k_norm"),
            lin(x, f"{b}.{s}_attn_v").unflatten(2, (heads, -1))] for s, x in (("img", xi), ("txt", xt))]
    attn = joint(*zip(*qkv))
    ref_img = img + im[2] * lin(attn[:, :6], f"{b}.img_attn_proj")
    ref_txt = txt + tm[2] * lin(attn[:, 6:], f"{b}.txt_attn_proj")
    ref_img = ref_img + im[5] * lin(F.gelu(lin(ln(ref_img) * (1 + im[4]) + im[3], f"{b}.img_mlp.fc1"),
                                           approximate="tanh"), f"{b}.img_mlp.fc2")
    ref_txt = ref_txt + tm[5] * lin(F.gelu(lin(ln(ref_txt) * (1 + tm[4]) + tm[3], f"{b}.txt_mlp.fc1"),
                                           approximate="tanh"), f"{b}.txt_mlp.fc2")
    with torch.no_grad():
        got_img, got_txt = transformer.transformer_blocks[1](img, txt, vec, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(got_img, ref_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_txt, ref_txt, rtol=1e-4, atol=1e-5)

    # a token-refiner block
    r = "txt_in.individual_token_refiner.blocks.1"
    x, c = torch.randn(2, 5, dim, generator=generator), torch.randn(2, dim, generator=generator)
    gate_attn, gate_mlp = lin(F.silu(c), f"{r}.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    fused = lin(F.layer_norm(x, (dim,), sd[f"{r}.norm1.weight"], sd[f"{r}.norm1.bias"], 1e-6), f"{r}.self_attn_qkv")
    q, k, v = fused.unflatten(2, (3, heads, -1)).unbind(2)  # (K H D): q, k, v outermost
    ref = x + gate_attn * lin(joint([q], [k], [v]), f"{r}.self_attn_proj")
    y = F.layer_norm(ref, (dim,), sd[f"{r}.norm2.weight"], sd[f"{r}.norm2.bias"], 1e-6)
    ref = ref + gate_mlp * lin(F.silu(lin(y, f"{r}.mlp.fc1")), f"{r}.mlp.fc2")
    with torch.no_grad():
        got = transformer.context_embedder.token_refiner.refiner_blocks[1](x, c)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)

    # the final layer: adaLN gives (shift, scale)
    shift, scale = lin(F.silu(vec), "final_layer.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    ref = lin(ln(img) * (1 + scale) + shift, "final_layer.linear")
    with torch.no_grad():
        got = transformer.proj_out(transformer.norm_out(img, vec))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)

    # action_in: Linear(256) of the label's sinusoid, SiLU, Linear, vs our MLP on the one-hot label
    labels = torch.tensor([0, 1, 9, 10, 45, 80])
    ref = lin(F.silu(lin(sinusoid(labels), "action_in.mlp.0")), "action_in.mlp.2")
    conditioning = load_model(hy15["out"]).backbone.conditioning
    with torch.no_grad():
        got = conditioning.frame_embedding(FrameConditions(actions=labels[:, None, None].float()), torch.float32)[:, 0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_hy15_variants_run_in_the_env(hy15, tmp_path):
    """action_in='drop' (minWM's own inference without --use_discrete_action): PRoPE only, the
    camera-delta action space, and the dropped keys are on record. Without PRoPE, action_in
    alone gives the env minWM's 81 labels."""
    report = convert_minwm(hy15["root"] / "ckpt", tmp_path / "out", base=hy15["root"] / "base",
                           action_in="drop", settings=TINY_SETTINGS)
    assert report.dropped == sorted(hy15["action_in"]) and report.conditioning["action_spec"] is None
    assert json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())["dropped"] == report.dropped
    env = gym.make("minwm/World-v0", model=str(tmp_path / "out"))
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
    assert obs.shape == (64, 64, 3)
    no_camera = {k: v for k, v in hy15["state"].items() if "prope" not in k}
    ckpt = write_hy15_checkpoint(tmp_path / "actions_only", no_camera, hy15["config"])
    convert_minwm(ckpt, tmp_path / "out2", base=hy15["root"] / "base", settings=TINY_SETTINGS)
    env = gym.make("minwm/World-v0", model=str(tmp_path / "out2"))
    assert env.action_space == gym.spaces.MultiDiscrete([81])
    env.reset(seed=0)
    obs, *_ = env.step(np.array([10]))  # forward + turn right: 9·1 + 1
    assert obs.shape == (64, 64, 3)


def test_minwm_labels_follow_the_rule_its_training_data_used():
    """minWM's pose rule (action_utils.py, discretize_poses_to_actions): w 9, s 18, d 27, a 36;
    l 1, j 2, i 3, k 4; below 0.01 units and 0.05° nothing; combinations add up (9·t + r)."""
    keys = {"w": 9, "s": 18, "d": 27, "a": 36, "l": 1, "j": 2, "i": 3, "k": 4, "stay": 0, "u": 0, "dn": 0}
    deltas = torch.tensor([KEY_DELTAS[k] for k in keys], dtype=torch.float64)
    assert minwm_action_labels(deltas)[:, 0].tolist() == list(keys.values())
    combined = torch.tensor([[0.08, 0, 0.08, 3, -3, 0], [-0.08, 0, -0.08, -3, 3, 0], [0.005, 0, 0, 0.04, -0.04, 5]],
                            dtype=torch.float64)
    # forward+right & right+down: 9·5 + 6; back+left & left+up: 9·8 + 7; too small to count (roll ignored)
    assert minwm_action_labels(combined)[:, 0].tolist() == [51, 79, 0]


def test_hy15_with_prope_and_action_in_streams_from_camera_deltas(hy15):
    """The converted model with both branches takes camera deltas: PRoPE gets the poses, the
    action branch minWM's label of each delta."""
    env = gym.make("minwm/World-v0", model=str(hy15["out"]), num_threads=1)
    assert env.action_space.shape == (6,)
    stream = env.unwrapped._world.generator.stream
    deltas = torch.tensor([[KEY_DELTAS["d"], KEY_DELTAS["a"]]], dtype=torch.float32)
    env.reset(seed=0)
    plan = stream.plan(deltas.expand(1, stream.chunk_frames, 6) if stream.chunk_frames == 2 else
                       deltas[:, :1].expand(1, stream.chunk_frames, 6))
    assert plan.conditions.actions[0, :, 0].tolist() == ([27.0, 36.0] if stream.chunk_frames == 2 else
                                                           [27.0] * stream.chunk_frames)
    right, *_ = env.step(np.array(KEY_DELTAS["d"], np.float32))
    env.reset(seed=0)
    left, *_ = env.step(np.array(KEY_DELTAS["a"], np.float32))
    assert np.abs(right.astype(int) - left.astype(int)).max() > 0
    with pytest.raises(ValueError, match="outside its bounds"):
        env.step(np.array([0, 0, 0, 30, 0, 0], np.float32))


def test_full_size_maps_cover_minwms_real_architectures():
    """On meta tensors (no memory): minWM's Wan2.1-1.3B and HunyuanVideo-1.5 480p key sets map
    onto diffusers' full-size classes with every key and shape accounted for, and the Tencent
    480p config converts to diffusers' HunyuanVideo-1.5 configuration."""
    from types import SimpleNamespace

    from minwm_env.backbones import CausalWan
    from minwm_env.convert import _check_against, hunyuan15_config_from_minwm, map_hunyuan15, map_wan

    with torch.device("meta"):
        wan_backbone = CausalWan(WanTransformer3DModel(**PRESETS["wan21-1.3b"].transformer), "v",
                                 ConditioningConfig(camera="prope"))
    state = to_minwm_wan(SimpleNamespace(backbone=wan_backbone))
    assert set(state) == minwm_wan_keys(30)
    mapped = map_wan({k[len("model."):]: v for k, v in state.items()})
    assert not mapped.unmapped
    for part, module in (("transformer", wan_backbone.transformer), ("conditioning", wan_backbone.conditioning)):
        assert _check_against(part, getattr(mapped, part), module.state_dict(), mapped.origin, part) == ([], [])
    assert sum(v.numel() for v in mapped.transformer.values()) == pytest.approx(1.42e9, rel=0.01)

    tencent_480p = {"patch_size": [1, 1, 1], "in_channels": 32, "concat_condition": True, "out_channels": 32,
                    "hidden_size": 2048, "heads_num": 16, "mlp_width_ratio": 4, "mlp_act_type": "gelu_tanh",
                    "mm_double_blocks_depth": 54, "mm_single_blocks_depth": 0, "rope_dim_list": [16, 56, 56],
                    "qkv_bias": True, "qk_norm": True, "qk_norm_type": "rms", "guidance_embed": False,
                    "use_meanflow": False, "text_projection": "single_refiner", "use_attention_mask": True,
                    "text_states_dim": 3584, "text_states_dim_2": None, "text_pool_type": None, "rope_theta": 256,
                    "glyph_byT5_v2": True, "vision_projection": "linear", "vision_states_dim": 1152,
                    "is_reshape_temporal_channels": False, "use_cond_type_embedding": True,
                    "ideal_resolution": "480p", "ideal_task": "i2v"}
    config, notes = hunyuan15_config_from_minwm(tencent_480p)
    with torch.device("meta"):
        reference = HunyuanVideo15Transformer3DModel()  # diffusers' defaults are the 480p model
        hy_backbone = CausalHunyuan15(HunyuanVideo15Transformer3DModel(**config), "v",
                                      ConditioningConfig(camera="prope"))
    assert not notes
    assert {k: _plain(v) for k, v in hy_backbone.transformer.config.items() if not k.startswith("_")} == \
        {k: _plain(v) for k, v in reference.config.items() if not k.startswith("_")}
    state, _ = to_minwm_hy15(SimpleNamespace(backbone=hy_backbone), {})
    assert set(state) == minwm_hy15_keys(54, action=False)
    mapped = map_hunyuan15(state)
    assert not mapped.unmapped
    for part, module in (("transformer", hy_backbone.transformer), ("conditioning", hy_backbone.conditioning)):
        assert _check_against(part, getattr(mapped, part), module.state_dict(), mapped.origin, part) == ([], [])
    assert sum(v.numel() for v in mapped.transformer.values()) == pytest.approx(8.33e9, rel=0.01)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

def _save_wan(state, path):
    torch.save({"generator_ema": state}, path)
    return path


def test_a_missing_key_is_named_and_can_be_filled_from_the_base_on_request(wan, tmp_path):
    state = dict(wan["state"])
    del state["model.blocks.1.ffn.0.weight"]
    path = _save_wan(state, tmp_path / "model.pt")
    base = wan["root"] / "base"
    with pytest.raises(ConversionError, match=r"not in the checkpoint.*blocks\.1\.ffn\.net\.0\.proj\.weight"):
        convert_minwm(path, tmp_path / "out", base=base)
    report = convert_minwm(path, tmp_path / "out", base=base, fill_from_base=True, settings=TINY_SETTINGS)
    assert report.filled_from_base == ["blocks.1.ffn.net.0.proj.weight"]
    a = load_model(wan["out"]).backbone.transformer.state_dict()
    b = load_model(tmp_path / "out").backbone.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    del state["model.blocks.0.self_attn.prope_o.bias"]  # conditioning is never filled
    with pytest.raises(ConversionError, match=r"prope_out\.0\.bias"):
        convert_minwm(_save_wan(state, tmp_path / "m2.pt"), tmp_path / "out2", base=base, fill_from_base=True)


def test_an_unknown_key_is_named_never_dropped(wan, hy15, tmp_path):
    state = {**wan["state"], "model.blocks.0.self_attn.extra_gate.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"no counterpart.*blocks\.0\.self_attn\.extra_gate\.weight"):
        convert_minwm(_save_wan(state, tmp_path / "model.pt"), tmp_path / "out", base=wan["root"] / "base")
    state = {**wan["state"], "model.action_in.mlp.0.weight": torch.zeros(32, 256)}  # minWM's Wan has no action_in
    with pytest.raises(ConversionError, match=r"action_in\.mlp\.0\.weight"):
        convert_minwm(_save_wan(state, tmp_path / "m2.pt"), tmp_path / "out", base=wan["root"] / "base")
    partial = {k: v for k, v in hy15["state"].items() if k != "action_in.mlp.2.bias"}
    ckpt = write_hy15_checkpoint(tmp_path / "hy", partial, hy15["config"])
    with pytest.raises(ConversionError, match=r"missing \['action_in\.mlp\.2\.bias'\]"):
        convert_minwm(ckpt, tmp_path / "out", base=hy15["root"] / "base")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_shape_mismatch_names_key_and_shapes(wan, hy15, tmp_path):
    state = dict(wan["state"])
    state["model.blocks.0.cross_attn.q.weight"] = torch.zeros(32, 16)
    with pytest.raises(ConversionError, match=r"blocks\.0\.cross_attn\.q\.weight -> blocks\.0\.attn2\.to_q\.weight: "
                                              r"checkpoint \(32, 16\) vs architecture \(32, 32\)"):
        convert_minwm(_save_wan(state, tmp_path / "model.pt"), tmp_path / "out", base=wan["root"] / "base")
    config = {**hy15["config"], "hidden_size": 64, "heads_num": 4}  # config and weights disagree
    ckpt = write_hy15_checkpoint(tmp_path / "hy", hy15["state"], config)
    with pytest.raises(ConversionError, match=r"shape mismatch at img_in\.proj\.weight -> x_embedder\.proj\.weight"):
        convert_minwm(ckpt, tmp_path / "out", base=hy15["root"] / "base")


def test_missing_files_unknown_formats_and_a_missing_base_are_clear(wan, hy15, tmp_path):
    hy15_base = hy15["root"] / "base"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_minwm(tmp_path / "nope.pt", tmp_path / "out", base=wan["root"] / "base")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConversionError, match="unknown checkpoint format '.txt'"):
        convert_minwm(tmp_path / "notes.txt", tmp_path / "out", base=wan["root"] / "base")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        convert_minwm(tmp_path / "broken.pt", tmp_path / "out", base=wan["root"] / "base")
    torch.save({"optimizer": {"step": 3}}, tmp_path / "opt.pt")
    with pytest.raises(ConversionError, match="top-level keys"):
        convert_minwm(tmp_path / "opt.pt", tmp_path / "out", base=wan["root"] / "base")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no minWM checkpoint"):
        read_minwm_checkpoint(tmp_path / "empty")
    with pytest.raises(ConversionError, match="pass base="):
        convert_minwm(wan["root"] / "model.pt", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        convert_minwm(wan["root"] / "model.pt", tmp_path / "out", base=tmp_path / "no-base")
    with pytest.raises(ConversionError, match="the checkpoint is a wan model but the base .* hunyuan15"):
        convert_minwm(wan["root"] / "model.pt", tmp_path / "out", base=hy15_base)
    with pytest.raises(ConversionError, match="exists and is not empty"):
        convert_minwm(wan["root"] / "model.pt", wan["out"], base=wan["root"] / "base")


def test_command_line(wan, tmp_path, capsys):
    args = [str(wan["root"] / "model.pt"), "--out", str(tmp_path / "out"), "--base", str(wan["root"] / "base"),
            "--height", "64", "--width", "64", "--verify"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "converted the minWM wan checkpoint" in printed and "verified" in printed
    assert load_model(tmp_path / "out").settings.height == 64
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o2"), "--base", str(wan["root"] / "base")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_cast_to_bfloat16_loads_and_a_wrong_family_is_named(wan, tmp_path):
    convert_minwm(wan["root"] / "model.pt", tmp_path / "out", base=wan["root"] / "base", dtype="bfloat16",
                  settings=TINY_SETTINGS)
    files = safetensors.torch.load_file(tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in files.values()} == {torch.bfloat16}
    original = wan["model"].backbone.transformer.state_dict()
    loaded = load_model(tmp_path / "out").backbone.transformer.state_dict()
    assert all(torch.equal(loaded[k], original[k].bfloat16().float()) for k in original)
    with pytest.raises(ConversionError, match="family='hunyuan15' was asked for.*wan"):
        convert_minwm(wan["root"] / "model.pt", tmp_path / "o2", family="hunyuan15", base=wan["root"] / "base")


def test_action_spec_is_minwms_81_labels():
    spec = minwm_action_spec()
    assert isinstance(spec, ActionSpec) and spec.discrete and spec.feature_dim == 81
    assert spec.neutral().tolist() == [0.0]  # label 0: no translation, no rotation
