"""Backbone adapters: the causal, streaming interface and its implementations."""

from .base import (AttentionContext, CausalBackbone, KVCache, KVCacheRows, PromptState, causal_frame_mask,
                   expand_frame_mask)
from .wan import CausalWan, FramePositionRotary

__all__ = ["AttentionContext", "CausalBackbone", "CausalWan", "FramePositionRotary", "KVCache", "KVCacheRows", "PromptState",
           "causal_frame_mask", "expand_frame_mask"]
