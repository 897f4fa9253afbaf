"""Token models (ViT, Swin): objectives on token layouts, renders at the fixed input size, and expanded
weights between token layers with attention frozen at its mean pattern, checked against the autograd
Jacobian of hand-written frozen copies."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

import weightviz as wv
from weightviz import objectives as obj
from weightviz.errors import WeightvizError
from weightviz.linearize import norms as _norms
from weightviz.models.inputs import fixed_input_size
from weightviz.models.layers import get_module


class FrozenLayerNorm(nn.Module):
    def __init__(self, ln: nn.LayerNorm, s: float):
        super().__init__()
        self.w, self.b, self.s = ln.weight.detach(), ln.bias.detach(), s

    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / self.s * self.w + self.b


def frozen_copy(model: nn.Module, stats, attn_type: str) -> nn.Module:
    """A deep copy: LayerNorm -> frozen affine map, GELU -> identity, every attention module's forward ->
    ``proj(P @ v)`` with ``P`` its frozen mean pattern (written out here, no weightviz code)."""
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(child, nn.LayerNorm):
                setattr(mod, cname, FrozenLayerNorm(child, stats.scales[full]))
            elif type(child).__name__ == "GELU":
                setattr(mod, cname, nn.Identity())
            elif type(child).__name__ == attn_type:
                child.forward = types.MethodType(_frozen_attention(stats.patterns[full]), child)
    return m


def _frozen_attention(pattern: torch.Tensor):
    def forward(self, x, *args, **kwargs):
        b, n, c = x.shape
        v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)[2]   # [b, heads, n, d]
        y = pattern.reshape(b, self.num_heads, n, n) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))

    return forward


def token_jacobian(model: nn.Module, src: str, dst: str, size: int, pick, units) -> torch.Tensor:
    """d pick(dst output)[u] / d src output by plain autograd, ``[U, *src_shape]``."""
    box = {}

    def src_hook(_m, _i, out):
        box["z"] = torch.zeros_like(out, requires_grad=True)
        return box["z"]

    hs = [get_module(model, src).register_forward_hook(src_hook),
          get_module(model, dst).register_forward_hook(lambda _m, _i, o: box.__setitem__("out", o))]
    try:
        model(torch.zeros(1, 3, size, size))
    finally:
        for h in hs:
            h.remove()
    y = pick(box["out"])
    return torch.stack([torch.autograd.grad(y[u], box["z"], retain_graph=True)[0][0] for u in units])


@pytest.fixture(scope="module")
def vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()


@pytest.fixture(scope="module")
def swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2),
                           num_classes=10).eval()


@pytest.fixture(scope="module")
def images32():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------ ViT
def test_vit_patterns_are_the_mean_softmax_over_the_images(vit, images32):
    stats = _norms.measure(vit, images32)
    for i, blk in enumerate(vit.blocks):
        seen = []
        h = blk.attn.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0].detach()))
        with torch.no_grad():
            vit(images32)
        h.remove()
        x = seen[0]
        qkv = blk.attn.qkv(x).reshape(*x.shape[:2], 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        probs = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) * blk.attn.scale, dim=-1)     # [B, heads, N, N]
        torch.testing.assert_close(stats.patterns[f"blocks.{i}.attn"], probs.mean(0, keepdim=True).detach(),
                                   rtol=1e-5, atol=1e-6)
    assert fixed_input_size(vit) == 32 and stats.size == 32


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("src, dst, token", [
    ("blocks.0", "blocks.1", None),                 # centre patch token
    ("blocks.0", "blocks.1", 0),                    # the class token
    ("blocks.0.attn.qkv", "blocks.1.mlp.fc1", 7),   # q and k drop out (frozen pattern), v stays
    ("patch_embed.proj", "blocks.1.attn.qkv", None),  # conv map [C, h, w] -> tokens
])
def test_vit_expanded_weights_equal_autograd_of_a_hand_frozen_copy(vit, images32, fused, src, dst, token):
    for blk in vit.blocks:
        blk.attn.fused_attn = fused      # fused: F.scaled_dot_product_attention; else softmax(q @ k^T)
    try:
        units = [0, 5, 17]
        E = wv.expanded_weights(vit, src, dst, units=units, images=images32, token=token)
    finally:
        for blk in vit.blocks:
            blk.attn.fused_attn = True
    ref = frozen_copy(vit, _norms.measure(vit, images32), "Attention")
    t = 1 + 1 * 4 + 1 if token is None else token                  # centre of the 4x4 patch grid after the cls
    J = token_jacobian(ref, src, dst, 32, lambda out: out[0, t], units)      # [U, N, C] or [U, C, h, w]
    J = J.transpose(1, 2) if J.dim() == 3 else J.flatten(2)
    assert E.shape == J.shape
    torch.testing.assert_close(E, J, rtol=1e-4, atol=1e-5 * float(J.abs().max()))
    assert float(E.abs().max()) > 0


def test_vit_tiny_expanded_weights_shape():
    torch.manual_seed(0)
    m = wv.load_model("timm:vit_tiny_patch16_224@random")
    imgs = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    E = wv.expanded_weights(m, "blocks.3", "blocks.4.attn.qkv", units=[0, 100], images=imgs)
    assert E.shape == (2, 192, 197) and torch.isfinite(E).all()


# ------------------------------------------------------------------------------------------ Swin
def test_swin_expanded_weights_equal_autograd_of_a_hand_frozen_copy(swin, images32):
    stats = _norms.measure(swin, images32)
    # the first block's pattern (no shift, no mask), by hand: softmax(q k^T * scale + relative position bias)
    attn = swin.layers[0].blocks[0].attn
    seen = []
    h = attn.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        swin(images32)
    h.remove()
    x = seen[0]                                                    # [B * windows, N, C]
    qkv = attn.qkv(x).reshape(*x.shape[:2], 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    logits = qkv[0] * attn.scale @ qkv[1].transpose(-2, -1) + attn._get_rel_pos_bias()
    probs = torch.softmax(logits, -1).reshape(images32.shape[0], -1, *logits.shape[1:]).mean(0)
    torch.testing.assert_close(stats.patterns["layers.0.blocks.0.attn"], probs.detach(), rtol=1e-5, atol=1e-6)

    src, dst, units = "layers.0.blocks.0", "layers.1.blocks.1", [0, 9, 30]
    E = wv.expanded_weights(swin, src, dst, units=units, images=images32)      # [U, C_src, 8*8]
    ref = frozen_copy(swin, stats, "WindowAttention")
    J = token_jacobian(ref, src, dst, 32, lambda out: out[0, 1, 1], units)     # dst [1, 4, 4, C]: centre (1, 1)
    J = J.permute(0, 3, 1, 2).flatten(2)
    assert E.shape == J.shape == (3, 16, 64)
    torch.testing.assert_close(E, J, rtol=1e-4, atol=1e-5 * float(J.abs().max()))
    for m in swin.modules():        # the fused path gives the same map
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    try:
        E2 = wv.expanded_weights(swin, src, dst, units=units, images=images32)
    finally:
        for m in swin.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    torch.testing.assert_close(E2, E, rtol=1e-5, atol=1e-6 * float(J.abs().max()))


# ------------------------------------------------------------------------------------------ objectives
def test_objectives_on_token_layouts():
    a = torch.randn(2, 1 + 9, 5)                                  # [B, N, C]: class token + 3x3 patches
    acts = {"t": a}
    torch.testing.assert_close(obj.channel("t", 3)(acts), a[:, 1:, 3].mean(1))         # class token excluded
    torch.testing.assert_close(obj.neuron("t", 3)(acts), a[:, 1 + 4, 3])                # centre patch
    torch.testing.assert_close(obj.neuron("t", 3, x=2, y=0)(acts), a[:, 1 + 2, 3])
    torch.testing.assert_close(obj.neuron("t", 3, token=0)(acts), a[:, 0, 3])          # the class token
    v = torch.randn(5)
    torch.testing.assert_close(obj.direction("t", v)(acts), (a[:, 1:] @ v).mean(1))
    torch.testing.assert_close(obj.direction_neuron("t", v, token=0)(acts), a[:, 0] @ v)
    h = torch.randn(2, 4, 4, 6)                                   # [B, H, W, C] channels-last
    torch.testing.assert_close(obj.channel("h", 5)({"h": h}), h[..., 5].mean((1, 2)))
    torch.testing.assert_close(obj.neuron("h", 5, x=3, y=2)({"h": h}), h[:, 2, 3, 5])
    with pytest.raises(WeightvizError, match="token 10 out of range"):
        obj.neuron("t", 0, token=10).check({"t": (10, 5)})
    with pytest.raises(WeightvizError, match="unit 5 out of range"):
        obj.channel("t", 5).check({"t": (10, 5)})
    obj.channel("h", 5).check({"h": (4, 4, 6)})


@pytest.mark.parametrize("arch, layer", [("vit_tiny_patch16_224", "blocks.2"),
                                         ("swin_tiny_patch4_window7_224", "layers.1.blocks.0")])
def test_render_token_models_at_their_fixed_input_size(arch, layer):
    torch.manual_seed(0)
    m = wv.load_model(f"timm:{arch}@random")
    assert fixed_input_size(m) == 224
    assert wv.layers(m)[layer].out_channels == 192
    seen = []
    h = m.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape[-2:])))
    try:
        r = wv.render(m, obj.channel(layer, 3), size=48, steps=2, progress=False)
    finally:
        h.remove()
    assert r.images.shape == (1, 3, 48, 48) and torch.isfinite(r.values).all()
    assert set(seen) == {(224, 224)}         # the 48-px image upsampled to the model's input size


def test_token_weights_figure_on_the_patch_grid(vit, images32, tmp_path):
    fig = wv.figures.token_weights(vit, "blocks.0", "blocks.1", 5, k=4, token=0, images=images32, fv=False)
    E = wv.expanded_weights(vit, "blocks.0", "blocks.1", units=[5], token=0, images=images32)[0]   # [C, N]
    order = torch.argsort(E.norm(dim=1), descending=True).tolist()[:4]
    assert fig.data["inputs"] == order and fig.data["grid"] == [4, 4] and fig.data["prefix"] == 1
    assert fig.data["vmax"] == pytest.approx(float(E[order, 1:].abs().max()), rel=1e-6)
    assert "token-weights" in wv.figures.FIGURES
    assert [c.channel for c in wv.rank_connections(E, 4)] == order      # token maps [C, N] rank the same way
    out = fig.save(tmp_path / "tokens.png")
    assert out.stat().st_size > 1000
    with pytest.raises(WeightvizError, match="not token layers"):
        wv.figures.token_weights(wv.load_model("lite0"), "blocks.2.0", "blocks.3.0", 1, fv=False)


def test_linearized_vit_is_affine(vit, images32):
    """Inside ``linearized`` (frozen norms and attention) the whole ViT is an affine map of its input."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad(), wv.linearized(vit, images=images32):
        f0 = vit(torch.zeros(1, 3, 32, 32))
        fa, fb, fab = vit(a) - f0, vit(b) - f0, vit(2 * a - 3 * b) - f0
    torch.testing.assert_close(fab, 2 * fa - 3 * fb, rtol=1e-4, atol=1e-5 * float(fab.abs().max()))
    with torch.no_grad():                      # the real network is not
        g0 = vit(torch.zeros(1, 3, 32, 32))
        ga, gb, gab = vit(a) - g0, vit(b) - g0, vit(2 * a - 3 * b) - g0
    assert not torch.allclose(gab, 2 * ga - 3 * gb, rtol=1e-3, atol=1e-3)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())


def test_cli_expand_between_token_layers(tmp_path, capsys):
    from safetensors.torch import load_file

    from weightviz.cli import main

    out = tmp_path / "e.safetensors"
    torch.manual_seed(0)
    assert main(["expand", "timm:vit_tiny_patch16_224@random", "blocks.3", "blocks.4", "--unit", "7,9", "--token", "0",
                 "--save", str(out), "-o", str(tmp_path / "e.png")]) == 0
    text = capsys.readouterr().out
    assert "14x14 patch grid" in text and "[units, C_src, N_tokens]" in text
    torch.manual_seed(0)
    m = wv.load_model("timm:vit_tiny_patch16_224@random")                 # the same weights: statistics are cached
    E = wv.expanded_weights(m, "blocks.3", "blocks.4", units=[7, 9], token=0)
    saved = load_file(str(out))
    assert saved["expanded_weights"].shape == (2, 192, 197)
    torch.testing.assert_close(saved["expanded_weights"], E, rtol=1e-5, atol=1e-7)
    assert (tmp_path / "e.png").stat().st_size > 1000


class _AttnMap(nn.Module):
    """conv -> self-attention over the positions of the map -> conv (a conv map in and out)."""

    weightviz_fixed_input_size = 16

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.conv1(x)
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)                                   # [B, N, C]
        a = torch.nn.functional.scaled_dot_product_attention(t, t, t)      # [B, N, C]
        return self.conv2(a.transpose(1, 2).reshape(b, c, hh, ww))


def test_receptive_field_through_attention_needs_no_statistics(monkeypatch):
    """The field depends on no value: attention without measured patterns reaches every token (the whole
    src map, hence truncated at the fixed size), and no statistics are measured for it."""
    def no_measure(*_a, **_k):
        raise AssertionError("receptive_field measured statistics")

    monkeypatch.setattr(_norms, "measure", no_measure)
    torch.manual_seed(0)
    rf = wv.receptive_field(_AttnMap().eval(), "conv2", "conv1")
    assert rf.input_size == 16 and rf.size == (16, 16) and rf.start == (0, 0) and rf.truncated


def test_receptive_field_between_token_layers_is_one_line(vit):
    with pytest.raises(WeightvizError, match=r"must output \[B, C, H, W\] or \[B, C\], got \[1, 17, 32\]") as e:
        wv.receptive_field(vit, "blocks.1", "blocks.0")
    assert "\n" not in str(e.value)


class _MaxSoftmaxGate(nn.Module):
    """A spatial attention gate computed from a channel max: ``c2(h * softmax_positions(amax_C(h)))``."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = self.c1(x)
        a = h.amax(1, keepdim=True)                                   # gate-only (weightviz._gating)
        return self.c2(h * torch.softmax(a.flatten(2), -1).reshape(a.shape))


def test_gate_only_max_into_a_frozen_softmax_equals_autograd():
    """amax feeding a softmax: the softmax is frozen at its mean over the images, so the amax branch drops
    out (as in front of a sigmoid gate) and the map is ``c2(z * P_mean)``; at another input size the error
    names the pattern's size, not the amax."""
    torch.manual_seed(0)
    m = _MaxSoftmaxGate().eval()
    imgs = torch.randn(4, 3, 32, 32)
    E = wv.expanded_weights(m, "c1", "c2", images=imgs, input_size=32)
    with torch.no_grad():
        a = m.c1(imgs).amax(1, keepdim=True)
        P = torch.softmax(a.flatten(2), -1).mean(0, keepdim=True).reshape(1, 1, 32, 32)
    rf = wv.receptive_field(m, "c2", "c1", input_size=32)
    z = torch.zeros(1, 8, 32, 32, requires_grad=True)
    y = m.c2(z * P)[0, :, rf.target[0], rf.target[1]]
    J = torch.stack([torch.autograd.grad(y[u], z, retain_graph=True)[0][0] for u in range(4)])
    (r0, c0), (kh, kw) = rf.start, rf.size
    torch.testing.assert_close(E, J[..., r0:r0 + kh, c0:c0 + kw], rtol=1e-4, atol=1e-5 * float(J.abs().max()))
    with pytest.raises(WeightvizError, match="measured at input size 32.*pass input_size=32"):
        wv.expanded_weights(m, "c1", "c2", images=imgs)
