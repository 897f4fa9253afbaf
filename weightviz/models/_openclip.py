"""CLIP image towers through open_clip (optional extra ``weightviz[clip]``): ``open_clip:<model>@<tag>``."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightvizError, suggest

__all__ = ["load_open_clip"]


def _frozen_attnpool_class(base: type) -> type:
    global _AttnPool
    if _AttnPool is None or _AttnPool.__bases__[0] is not base:
        _AttnPool = type("AttentionPool2d", (base,), {"forward": _attnpool_forward, "__module__": __name__,
                                                      "__qualname__": "_AttnPool"})
    return _AttnPool


def _attnpool_forward(self, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d.forward`` with its attention as ``F.scaled_dot_product_attention`` on
    the named ``q_proj``/``k_proj``/``v_proj``/``c_proj`` layers instead of the fused
    ``F.multi_head_attention_forward``: the same output (only the mean token's query is read), and
    expanded weights freeze its attention pattern like any other attention."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)                       # [B, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)             # [B, HW+1, C]
    x = x + self.positional_embedding[None].to(x.dtype)
    heads = self.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)

    q, k, v = split(self.q_proj(x[:, :1])), split(self.k_proj(x)), split(self.v_proj(x))
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, c)
    return self.c_proj(o)[:, 0]


_AttnPool: type | None = None


def load_open_clip(arch: str, at: str, one_line, mark_random) -> nn.Module:
    """``model.visual`` of ``open_clip.create_model_and_transforms(arch, pretrained=at)`` with its
    evaluation preprocessing (``weightviz_preprocess``) and input spec."""
    try:
        import open_clip
    except ImportError:
        raise WeightvizError("open_clip specs need the optional extra: pip install 'weightviz[clip]' "
                             "(open_clip_torch)") from None
    from .inputs import InputSpec

    names = open_clip.list_models()
    if arch not in names:
        raise WeightvizError(f"unknown open_clip model {arch!r}.{suggest(arch, names)}")
    tags = list(open_clip.list_pretrained_tags_by_model(arch))
    random = at.lower() == "random" or (not at and not tags)
    pretrained = None if random else (at or tags[0])
    if pretrained and not os.path.exists(pretrained) and pretrained not in tags:
        raise WeightvizError(f"open_clip:{arch} has no pretrained tag {pretrained!r}: choose one of {tags} "
                             "or pass a weights file")
    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained in tags else {}
    try:  # quick_gelu as the tag was trained with (open_clip warns of a mismatch otherwise)
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, force_quick_gelu=bool(cfg.get("quick_gelu", False)))
    except Exception as e:  # hub / network / offline errors, a file that does not fit
        from huggingface_hub import constants

        msg = one_line(e)
        repo = (cfg.get("hf_hub") or cfg.get("url") or "?").rstrip("/")
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise WeightvizError(f"weights for open_clip:{arch}@{pretrained} do not fit the model ({msg})") from None
        raise WeightvizError(
            f"open_clip:{arch}@{pretrained} needs open_clip_model.safetensors (or open_clip_pytorch_model.bin) "
            f"from {repo}, not found in the hub cache {constants.HF_HUB_CACHE}; connect to the network to "
            f"download it, or pass 'open_clip:{arch}@path/to/weights' ({msg})") from None
    visual = model.visual.eval()
    pool = getattr(visual, "attnpool", None)
    if pool is not None and type(pool).__name__ == "AttentionPool2d" and hasattr(pool, "q_proj"):
        pool.__class__ = _frozen_attnpool_class(type(pool))
    visual.weightviz_preprocess = preprocess
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    visual.weightviz_input_spec = InputSpec(channels=3, size=size, mean=tuple(float(v) for v in mean),
                                            std=tuple(float(v) for v in std), interpolation="bicubic",
                                            crop_pct=1.0)
    if random:
        mark_random(visual, "" if at else f" (open_clip has no pretrained weights for {arch})", "open_clip", arch)
    else:
        visual.weightviz_weights_source = f"open_clip {arch} pretrained={pretrained}"
    return visual
