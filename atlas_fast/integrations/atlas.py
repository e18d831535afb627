"""One call makes a facebookresearch/atlas model use atlas_fast, with no edit to Atlas's files.

    from atlas_fast.integrations.atlas import use_atlas_fast

    model = use_atlas_fast(model)  # an `src.atlas.Atlas`, after Atlas built or loaded it; returns the same object

On that instance only, it replaces the methods of Atlas's training step that compute the retriever's targets
and losses (same names, arguments and results, so `Atlas.forward` calls them unchanged):

- `kldivloss(score, gold_score)`: atlas_fast.losses.kldivloss at Atlas's `opt.temperature_score` and
  `opt.temperature_gold` (PDist, ADist and LOOP train with it);
- `perplexity_score(...)` (PDist, "ppmean"): the reader's encoder and decoder run without its LM head, and
  `pdist_gold_scores` reads each target token's log-probability from the final decoder states, so the
  (B·K, T, V) logits are never built;
- `emdr_score(...)` and `logprob(score, gold_score, labels)` (EMDR²): the first returns the (B, K, T) token
  log-probabilities at `opt.temperature_gold` (`emdr_token_logprobs`, no logits either) instead of Atlas's
  (B·K, T, V) logits, and the second is `emdr_loss` on them;
- `loop_score(...)` (LOOP): the passages are encoded once, then `loop_gold_scores` runs the K leave-one-out
  decoder passes batched, each layer's cross-attention keys and values projected once per example;
- `eval_score(...)` (ADist, Atlas's "evalnormsum"): one decoder pass in which each cross-attention layer's
  inputs are handed to `fid_cross_attention` for the per-passage mass Σ α·‖v‖, never the (B, NH, T, K·L)
  maps, then `adist_gold_scores`: Atlas's intended `normssum`. (Atlas's own path looks the scores up under
  "normsum" while they are stored as "normssum", and at 0ec8889 its T5 stores none, so it cannot run.)

Atlas's global FiD shape settings (`cfg.bsz`, `cfg.n_context` on the reader's encoder config) are set here as
Atlas's own methods set them. Gold scores are computed in float32 from the reader's states (Atlas computes them
in the reader's precision): under bf16 they differ from Atlas's by the rounding Atlas incurs.

Not covered: Atlas's other "eval" modes (raw scores, probabilities, top-k), which raise NotImplementedError, and
the retriever's score (two statements inside `Atlas.forward`, which this module does not edit).
"""

from __future__ import annotations

import types

import torch

from atlas_fast import losses
from atlas_fast.attention import fid_cross_attention
from atlas_fast.fid_patch import cross_attention_modules

__all__ = ["use_atlas_fast"]


def _set_fid_shape(model, cfg, bsz: int, n_context: int) -> None:
    """Atlas's FiD encoder reshapes its input by these two globals of its own config, which Atlas passes around as
    ``cfg``; both are set, in case a caller's ``cfg`` is another object. A plain T5 ignores them."""
    for config in (cfg, model.reader.encoder.config):
        config.bsz, config.n_context = bsz, n_context


def _encode(model, reader_ids: torch.Tensor, reader_mask: torch.Tensor, cfg) -> torch.Tensor:
    """(B, K, L) passages, each encoded alone → (B, K·L, d), as Atlas's FiD concatenates them."""
    B, K, L = reader_ids.shape
    _set_fid_shape(model, cfg, B * K, 1)
    states = model.reader.encoder(
        input_ids=reader_ids.reshape(B * K, L), attention_mask=reader_mask.reshape(B * K, L), return_dict=True
    ).last_hidden_state
    return states.reshape(B, K * L, -1)


def _decoder_states(model, states, mask, decoder_input_ids) -> torch.Tensor:
    """The final decoder states as the LM head sees them (scaled by d_model^-0.5 when T5 ties its embeddings)."""
    hidden = model.reader.decoder(
        input_ids=decoder_input_ids,
        encoder_hidden_states=states,
        encoder_attention_mask=mask,
        use_cache=False,
        return_dict=True,
    ).last_hidden_state
    return hidden * losses.t5_lm_head_scale(model.reader.config)


def _single_passage_states(model, reader_ids, reader_mask, decoder_input_ids, cfg) -> torch.Tensor:
    """(B, K, T, d) decoder states of the B·K single-passage reader passes PDist and EMDR² score."""
    B, K, L = reader_ids.shape
    states = _encode(model, reader_ids, reader_mask, cfg).reshape(B * K, L, -1)
    repeated_inputs = torch.repeat_interleave(decoder_input_ids, K, dim=0)
    hidden = _decoder_states(model, states, reader_mask.reshape(B * K, L), repeated_inputs)
    return hidden.reshape(B, K, hidden.shape[1], -1)


def _kldivloss(self, score, gold_score):
    return losses.kldivloss(score, gold_score, self.opt.temperature_score, self.opt.temperature_gold)


@torch.no_grad()
def _perplexity_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz):
    self.reader.eval()  # as Atlas's: `forward` puts it back in training mode
    hidden = _single_passage_states(self, reader_ids, reader_mask, decoder_input_ids, cfg)
    return losses.pdist_gold_scores(hidden, self.reader.lm_head.weight, labels)


@torch.no_grad()
def _emdr_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz):
    self.reader.eval()
    hidden = _single_passage_states(self, reader_ids, reader_mask, decoder_input_ids, cfg)
    return losses.emdr_token_logprobs(hidden, self.reader.lm_head.weight, labels, self.opt.temperature_gold)


def _logprob(self, score, gold_score, labels):
    return losses.emdr_loss(score, gold_score, labels, self.opt.temperature_score)


@torch.no_grad()
def _loop_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz):
    self.reader.eval()
    B, K, L = reader_ids.shape
    states = _encode(self, reader_ids, reader_mask, cfg)
    _set_fid_shape(self, cfg, B, K)
    return losses.loop_gold_scores(self.reader, states, reader_mask.reshape(B, K * L), labels, K)


# Atlas's gold_score_mode for ADist with the ‖v‖-weighted attention summed over target tokens ("normssum").
ADIST_MODES = ("evalnormsum", "evalnormssum")


def _heads(module, states: torch.Tensor) -> torch.Tensor:
    """(B, S, NH·Dh) projections → (B, NH, S, Dh) for a T5 attention module (n_heads, key_value_proj_dim)."""
    B, S, _ = states.shape
    return states.view(B, S, module.n_heads, module.key_value_proj_dim).transpose(1, 2)


@torch.no_grad()
def _eval_score(self, reader_ids, reader_mask, decoder_input_ids, labels, cfg, bsz, mask_query=None):
    mode = self.opt.gold_score_mode
    if mode not in ADIST_MODES:
        raise NotImplementedError(
            f"use_atlas_fast computes ADist as {' or '.join(ADIST_MODES)} (Atlas's normssum); gold_score_mode "
            f"{mode!r} is not covered: run it without use_atlas_fast"
        )
    self.reader.eval()
    B, K, L = reader_ids.shape
    states = _encode(self, reader_ids, reader_mask, cfg)
    _set_fid_shape(self, cfg, B, K)
    flat_mask = reader_mask.reshape(B, K * L)
    masses = []

    def passage_mass(module, args, kwargs, _output):
        queries = args[0] if args else kwargs["hidden_states"]  # the normed decoder states the layer attends from
        encoder_states = kwargs["key_value_states"]
        q = _heads(module, module.q(queries))
        k, v = _heads(module, module.k(encoder_states)), _heads(module, module.v(encoder_states))
        _, mass = fid_cross_attention(q, k, v, flat_mask, K, 1.0, "vnorm")  # (B, NH, T, K)
        masses.append(mass.mean(1))

    hooks = [
        module.register_forward_hook(passage_mass, with_kwargs=True)
        for module, _, _ in cross_attention_modules(self.reader)
    ]
    try:
        self.reader.decoder(
            input_ids=decoder_input_ids,
            encoder_hidden_states=states,
            encoder_attention_mask=flat_mask,
            use_cache=False,
            return_dict=True,
        )
    finally:
        for hook in hooks:
            hook.remove()
    return losses.adist_gold_scores(torch.stack(masses).sum(0), labels, len(masses))


_METHODS = {
    "kldivloss": _kldivloss,
    "perplexity_score": _perplexity_score,
    "emdr_score": _emdr_score,
    "logprob": _logprob,
    "loop_score": _loop_score,
    "eval_score": _eval_score,
}


def use_atlas_fast(model):
    """Replace, on this Atlas instance, the methods listed in this module's docstring; returns ``model``.

    Raises:
        TypeError: ``model`` lacks one of those methods or the attributes they read (``opt``, ``reader``), so it is
            not an Atlas model of the supported layout.
    """
    missing = [name for name in (*_METHODS, "opt", "reader") if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"use_atlas_fast expects an Atlas model (src.atlas.Atlas); {type(model).__name__} has no "
            f"{', '.join(missing)}"
        )
    for name, method in _METHODS.items():
        setattr(model, name, types.MethodType(method, model))
    return model
