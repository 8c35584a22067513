"""Text prompts as Wan encodes them: UMT5 over the tokenizer of a local Wan folder.

    from minwm_env.text import WanTextEncoder
    encoder = WanTextEncoder.from_pretrained("/path/to/Wan2.1-T2V-1.3B-Diffusers")
    embeds = encoder.encode("a sunny street")        # (1, 512, 4096)

The encoding is diffusers' ``WanPipeline._get_t5_prompt_embeds``: the prompt is cleaned
(``prompt_clean``), tokenized to 512 tokens with padding and truncation, run through the
encoder with its attention mask, and each prompt's states are cut to its true length and
zero-padded back to 512 (Wan's transformer has no text mask: it attends to the zeros).

It needs ``transformers`` (``pip install "minwm[text]"``) and a Wan folder holding
``text_encoder/`` (``UMT5EncoderModel``) and ``tokenizer/``; nothing is ever downloaded.
The env (``reset(options={"prompt": "a sunny street"})``) finds the encoder through
:func:`text_encoder_folder` and loads it on first use (:class:`PromptEncoder`).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from pathlib import Path

import torch

TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
MAX_SEQUENCE_LENGTH = 512  # UMT5's length in WanPipeline (max_sequence_length=512 in its __call__)
INSTALL_HINT = 'pip install "minwm[text]"'
WHAT_IS_NEEDED = (f"string prompts need a Wan folder with {TEXT_ENCODER_DIR}/ (UMT5) and {TOKENIZER_DIR}/ "
                  f"(e.g. Wan2.1-T2V-1.3B-Diffusers) and transformers ({INSTALL_HINT})")


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"string prompts need the transformers package (UMT5 and its tokenizer): "
                          f"{INSTALL_HINT}") from err
    return transformers


def clean_prompt(text: str) -> str:
    """WanPipeline's ``prompt_clean``: ftfy's fixes when ftfy is installed, HTML entities
    unescaped twice, whitespace runs collapsed to one space, the ends stripped."""
    import regex  # a dependency of diffusers; its \\s is the one WanPipeline uses

    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


def check_text_folder(folder: str | Path) -> Path:
    """``folder`` as a Path, or a ValueError naming the folder and what it lacks."""
    folder = Path(folder)
    missing = [f"{name}/" for name in (TEXT_ENCODER_DIR, TOKENIZER_DIR) if not (folder / name).is_dir()]
    if missing:
        raise ValueError(f"{folder} has no {' and no '.join(missing)} subfolder, so it cannot encode text; "
                         f"{WHAT_IS_NEEDED} (a folder written by minwm-convert: link them in from its --base "
                         f"folder). Or pass the prompt as embeddings (L, text_dim).")
    return folder


class WanTextEncoder:
    """A Wan folder's UMT5 encoder and tokenizer: prompts in, (B, 512, d_model) embeddings out."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> "WanTextEncoder":
        """Load ``folder/text_encoder`` and ``folder/tokenizer`` (local files only), the encoder
        in ``dtype`` (None: as stored) on ``device``."""
        folder = check_text_folder(folder)
        transformers = _transformers()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR, local_files_only=True)
        text_encoder = transformers.UMT5EncoderModel.from_pretrained(
            folder / TEXT_ENCODER_DIR, local_files_only=True, dtype=dtype if dtype is not None else "auto")
        return cls(tokenizer, text_encoder.to(device), max_sequence_length)

    @property
    def dim(self) -> int:
        """The width of the embeddings (UMT5-XXL: 4096), the transformer's ``text_dim``."""
        return self.text_encoder.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def encode(self, prompt: str | list[str]) -> torch.Tensor:
        """(B, max_sequence_length, dim) embeddings of one prompt (B = 1) or a list, in the
        encoder's dtype on its device, exactly as WanPipeline computes them."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a string or a non-empty list of strings")
        length = self.max_sequence_length
        tokens = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        states = self.text_encoder(tokens.input_ids.to(self.device), mask).last_hidden_state
        # each prompt's states up to its last real token, then zeros: the padded tokens' states
        # are not what Wan was trained with
        padding = torch.arange(length, device=states.device)[None, :] >= mask.gt(0).sum(dim=1, keepdim=True)
        return states.masked_fill(padding[..., None], 0.0)

    __call__ = encode


def text_encoder_folder(source) -> Path:
    """The folder whose ``text_encoder/`` and ``tokenizer/`` encode prompts for the model
    ``source`` was loaded from (a folder, a shipped model's name), or a ValueError saying what
    is missing: a preset and a loaded ``WorldModel`` have no folder, a folder may lack them."""
    from .models import PRESETS, SHIPPED_MODELS, WorldModel

    if isinstance(source, WorldModel):
        raise ValueError(f"the env was given a loaded WorldModel, which does not say which folder it came from; "
                         f"{WHAT_IS_NEEDED}: pass that folder as model=... (or the prompt as embeddings)")
    if isinstance(source, str) and source in PRESETS:
        raise ValueError(f"the model {source!r} is a preset with random weights and no text encoder; "
                         f"{WHAT_IS_NEEDED}. Or pass the prompt as embeddings (L, text_dim).")
    folder = SHIPPED_MODELS.get(source, Path(source)) if isinstance(source, str) else Path(source)
    return check_text_folder(folder)


class PromptEncoder:
    """String prompts for one model, as the env takes them: the encoder is found and loaded on
    the first string, and each distinct prompt is encoded once (the last ``cache_size`` kept).
    The encoder stays loaded for later prompts (UMT5-XXL: 5.7B parameters, ~11 GB in bfloat16).

    ``source``: what the model was loaded from (a folder, a name, or a ``WorldModel``);
    ``text_dim``: the backbone's; ``device`` and ``dtype``: where the encoder runs."""

    def __init__(self, source, text_dim: int, device, dtype: torch.dtype, wan: bool = True,
                 cache_size: int = 64):
        self.source, self.text_dim, self.device, self.dtype, self.wan = source, text_dim, device, dtype, wan
        self.cache_size = cache_size
        self.encoder: WanTextEncoder | None = None
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def load(self) -> WanTextEncoder:
        if self.encoder is None:
            if not self.wan:
                raise ValueError(f"string prompts are encoded for Wan models only (UMT5); this model is not one. "
                                 f"Pass the prompt as embeddings (L, {self.text_dim}).")
            folder = text_encoder_folder(self.source)
            encoder = WanTextEncoder.from_pretrained(folder, device=self.device, dtype=self.dtype)
            if encoder.dim != self.text_dim:
                raise ValueError(f"the text encoder in {folder} gives {encoder.dim}-wide "
                                 f"embeddings, the transformer takes text_dim={self.text_dim}")
            self.encoder = encoder
        return self.encoder

    def __call__(self, prompt: str) -> torch.Tensor:
        """(1, 512, text_dim) embeddings of ``prompt``."""
        if prompt in self.cache:
            self.cache.move_to_end(prompt)
            return self.cache[prompt]
        embeds = self.load().encode(prompt)
        self.cache[prompt] = embeds
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return embeds
