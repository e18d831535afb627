"""Route a Hugging Face seq2seq decoder's cross-attention through `fid_cross_attention`.

Two model families are supported: T5ForConditionalGeneration (no 1/√d scaling) and
EncoderDecoderModel with a BERT-style decoder (scale 1/√d; the offline default reader).
`patch_for_fid(model, n_passages)` registers an attention implementation with
transformers' attention-function registry (T5 routes every attention call through
it) and switches the model to it. Decoder cross-attention modules then run the
FiD op, which also yields the per-passage value-norm mass that ADist needs;
every other attention (encoder, decoder self-attention) runs Hugging Face's eager
implementation, so the model's outputs equal the unpatched model's to fp32
tolerance. After each decoder forward, `patch.passage_mass()` is that mass summed
over the decoder layers, head-averaged, (B, T, K): the input of
`losses.adist_gold_scores` (with `n_layers=patch.n_layers`).

The model sees FiD inputs: encoder states of the K passages of each example
concatenated to (B, K·L, H) with their (B, K·L) attention mask, e.g. through
``model(encoder_outputs=..., attention_mask=..., labels=...)``. K and whether the
mass is collected are per-forward settings: ``with patch.forward_settings(K, collect_mass):``
scopes them to a block and restores the previous ones after it (the values given to
`patch_for_fid` hold outside any block). `patch.unpatch()` restores the model.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from atlas_fast.attention import fid_cross_attention

__all__ = ["FiDPatch", "cross_attention_modules", "patch_for_fid"]

IMPLEMENTATION = "atlas_fast_fid"


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None, **kwargs):
    """The registered attention function: FiD for marked cross-attention modules, eager otherwise."""
    patch = getattr(module, "_atlas_fast_fid", None)
    if patch is None:
        # The eager function of the module's own model family (T5's takes a position bias, BERT's does not).
        eager_attention_forward = sys.modules[type(module).__module__].eager_attention_forward
        if position_bias is not None:
            kwargs["position_bias"] = position_bias
        return eager_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    # Eager masks are additive: 0 for a real key, the most negative float for padding.
    if attention_mask is None:
        real = torch.ones(key.shape[0], key.shape[2], dtype=torch.bool, device=key.device)
    else:
        real = attention_mask[:, 0, 0, :] == 0
        real = real.expand(key.shape[0], -1)
    scale = 1.0 if scaling is None else scaling
    dropout_p = dropout if module.training else 0.0
    if patch.collect_mass:
        out, mass = fid_cross_attention(query, key, value, real, patch.n_passages, scale, "vnorm", dropout_p)
        patch._add_layer_mass(mass.mean(dim=1))  # head mean, (B, T, K)
    else:
        out = fid_cross_attention(query, key, value, real, patch.n_passages, scale, dropout_p=dropout_p)
    return out.transpose(1, 2).contiguous(), None


class FiDPatch:
    """The handle `patch_for_fid` returns.

    Attributes:
        n_passages: K of forwards outside a `forward_settings` block.
        collect_mass: whether those forwards compute the per-passage mass (an extra pass over values).
        n_layers: decoder layers whose mass is summed.
    """

    def __init__(self, model, n_passages: int, collect_mass: bool, previous_implementation: str):
        self.model = model
        self.n_passages = n_passages
        self.collect_mass = collect_mass
        self._previous = previous_implementation
        self._modules = [module for module, _, _ in cross_attention_modules(model)]
        self.n_layers = len(self._modules)
        self._mass: torch.Tensor | None = None
        for module in self._modules:
            module._atlas_fast_fid = self
        # Each decoder forward starts at the first cross-attention layer: the mass restarts there.
        self._hook = self._modules[0].register_forward_pre_hook(self._reset)

    @contextlib.contextmanager
    def forward_settings(self, n_passages: int, collect_mass: bool = False):
        """Forwards inside the block see ``n_passages`` passages per example and compute the mass when
        ``collect_mass``; the settings before the block come back after it, even on an error."""
        saved = self.n_passages, self.collect_mass
        self.n_passages, self.collect_mass = n_passages, collect_mass
        try:
            yield self
        finally:
            self.n_passages, self.collect_mass = saved

    def _reset(self, *_):
        self._mass = None

    def _add_layer_mass(self, mass: torch.Tensor) -> None:
        self._mass = mass if self._mass is None else self._mass + mass

    def passage_mass(self) -> torch.Tensor:
        """(B, T, K) float32 Σ over decoder layers of the head-mean α·‖v‖ per passage, from the last forward."""
        if self._mass is None:
            raise RuntimeError("no mass yet: run a forward pass with collect_mass=True first")
        return self._mass

    def unpatch(self) -> None:
        """Restore the model's own attention implementation and remove every trace of the patch."""
        for module in self._modules:
            del module._atlas_fast_fid
        self._hook.remove()
        set_attention_implementation(self.model, self._previous)


def set_attention_implementation(model, name: str) -> None:
    """``model.set_attn_implementation(name)``, reaching every sub-config: transformers 5.17 sets only the top-level
    config, while T5's encoder and decoder stacks (and their attention modules) attend by their own copies."""
    model.set_attn_implementation(name)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", name) != name:
            config._attn_implementation = name


def cross_attention_modules(model) -> list[tuple[nn.Module, str, str]]:
    """(module, key projection attribute, value projection attribute) of each decoder cross-attention layer.

    Raises ValueError for a model that is neither a T5 nor an encoder-decoder with a BERT-style decoder.
    """
    if hasattr(model, "decoder") and hasattr(model.decoder, "block"):  # T5
        return [(block.layer[1].EncDecAttention, "k", "v") for block in model.decoder.block]
    layers = getattr(getattr(getattr(getattr(model, "decoder", None), "bert", None), "encoder", None), "layer", None)
    if layers is not None and all(hasattr(layer, "crossattention") for layer in layers):
        return [(layer.crossattention.self, "key", "value") for layer in layers]
    raise ValueError(
        "model must be a transformers T5ForConditionalGeneration or an EncoderDecoderModel whose decoder is "
        f"BERT-style with cross-attention; got {type(model).__name__}"
    )


def patch_for_fid(model, n_passages: int, collect_mass: bool = True) -> FiDPatch:
    """Make ``model`` a FiD reader on atlas_fast's attention.

    Args:
        model: a T5ForConditionalGeneration or an EncoderDecoderModel with a BERT-style decoder; its decoder
            cross-attention must have no relative position bias (T5's never does).
        n_passages: K, passages per example in forwards outside a `FiDPatch.forward_settings` block.
        collect_mass: compute the ADist mass in those forwards.

    Returns:
        The FiDPatch handle.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    modules = [module for module, _, _ in cross_attention_modules(model)]
    if any(getattr(module, "_atlas_fast_fid", None) for module in modules):
        raise ValueError("model is already patched; call unpatch() on its FiDPatch first")
    if any(getattr(module, "has_relative_attention_bias", False) for module in modules):
        raise ValueError("cross-attention with a relative position bias is not supported")
    AttentionInterface.register(IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)  # additive masks, as eager attention takes
    previous = model.config._attn_implementation
    set_attention_implementation(model, IMPLEMENTATION)
    return FiDPatch(model, n_passages, collect_mass, previous)
