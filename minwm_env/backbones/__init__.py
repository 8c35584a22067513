"""Backbone adapters: the causal, streaming interface and its implementations."""

from .base import (AttentionContext, CausalBackbone, KVCache, KVCacheRows, PromptState, causal_frame_mask,
                   expand_frame_mask)
from .hunyuan import CausalHunyuan15, HunyuanPromptState, HunyuanRotary
from .wan import CausalWan, FramePositionRotary

__all__ = ["AttentionContext", "CausalBackbone", "CausalHunyuan15", "CausalWan", "FramePositionRotary",
           "HunyuanPromptState", "HunyuanRotary", "KVCache", "KVCacheRows", "PromptState", "causal_frame_mask",
           "expand_frame_mask"]
