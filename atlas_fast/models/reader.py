"""Fusion-in-Decoder reader over a Hugging Face seq2seq model.

Each of the K passages of an example is encoded independently with the query
(FiD), the decoder attends over the concatenation (B, K·L, H). Nothing global is
mutated per call (Atlas sets ``config.bsz`` and ``config.n_context`` before every
forward): shapes come from the tensors, K from the call (scoped to it with
`FiDPatch.forward_settings`). Passages are padded to the longest in the batch, not to a
fixed length.

Two model families, one interface:
- T5ForConditionalGeneration, Atlas's reader (first-class; load it from a local checkpoint);
- EncoderDecoderModel with BERT-style encoder and decoder, warm-started from the packaged
  MiniLM — the offline default, since no pretrained T5 can be had offline.
The decoder's cross-attention runs `fid_cross_attention` (through `patch_for_fid`),
which also yields the per-passage attention mass that ADist needs. `gold_scores` is
the reader's judgement of each passage, the retriever's teacher (PDist, ADist, LOOP, EMDR²).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atlas_fast.data.formats import Example, Passage
from atlas_fast.data.formatting import TextFormat
from atlas_fast.fid_patch import patch_for_fid
from atlas_fast.losses import (
    adist_gold_scores,
    emdr_loss,
    emdr_token_logprobs,
    kldivloss,
    loop_gold_scores,
    pdist_gold_scores,
    t5_lm_head_scale,
)
from atlas_fast.models.modes import eval_mode

__all__ = ["FiDReader"]


class FiDReader(nn.Module):
    """A seq2seq model used as a FiD reader.

    Args:
        model: T5ForConditionalGeneration or a BERT-decoder EncoderDecoderModel.
        tokenizer: its tokenizer.
        text_format: query / target / passage templates.
        passage_max_length: reader input tokens per passage (truncation).
        target_max_length: target tokens (truncation, and the generation limit).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        text_format: TextFormat,
        passage_max_length: int = 200,
        target_max_length: int = 16,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.passage_max_length = passage_max_length
        self.target_max_length = target_max_length
        self.is_t5 = hasattr(model.decoder, "block")
        self.fid = patch_for_fid(model, n_passages=1, collect_mass=False)
        config = model.config
        self.decoder_start_id = config.decoder_start_token_id
        self.eos_id = config.eos_token_id if self.is_t5 else tokenizer.sep_token_id
        self.pad_id = config.pad_token_id

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_t5(cls, path: str | os.PathLike, **kwargs) -> FiDReader:
        """A T5 reader from a local checkpoint directory, with Atlas's text format."""
        from transformers import AutoTokenizer, T5ForConditionalGeneration

        if not Path(path).is_dir():
            raise ValueError(f"reader path {str(path)!r} is not a local model directory")
        model = T5ForConditionalGeneration.from_pretrained(path)
        return cls(model, AutoTokenizer.from_pretrained(path), TextFormat.atlas_t5(), **kwargs)

    @classmethod
    def from_bert_encoder(
        cls, path: str | os.PathLike, decoder_layers: int = 0, share_encoder_embeddings: bool = False, **kwargs
    ) -> FiDReader:
        """An encoder-decoder warm-started from one BERT-style checkpoint, with the plain text format.

        Encoder and decoder both start from the checkpoint; the decoder's cross-attention, which the
        checkpoint lacks, starts as a copy of the layer's self-attention rather than at random.
        ``decoder_layers`` > 0 keeps only the first that many decoder layers (a shallower decoder
        learns and runs faster on a CPU); 0 keeps them all. ``share_encoder_embeddings`` makes the
        decoder's input embeddings and its output layer the encoder's word embeddings (one
        parameter, frozen with the encoder when the encoder is): the decoder then predicts a token
        from a state that points at that token's own embedding, which is what a copied passage
        token looks like at the encoder's output, so copying starts easy.
        """
        from transformers import AutoTokenizer, EncoderDecoderModel
        from transformers.utils import logging

        if not Path(path).is_dir():
            raise ValueError(f"reader path {str(path)!r} is not a local model directory")
        tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the fresh cross-attention weights are expected, not news
        try:
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path)
        finally:
            logging.set_verbosity(verbosity)
        layers = model.decoder.bert.encoder.layer
        if decoder_layers:
            if not 0 < decoder_layers <= len(layers):
                raise ValueError(f"decoder_layers must be in [0, {len(layers)}]; got {decoder_layers}")
            del layers[decoder_layers:]
            model.config.decoder.num_hidden_layers = decoder_layers
        _cross_attention_from_self_attention(layers)
        if share_encoder_embeddings:
            _share_encoder_embeddings(model)
        model.config.decoder_start_token_id = tokenizer.cls_token_id
        model.config.eos_token_id = tokenizer.sep_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, TextFormat.plain(), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_decoder_layers(self) -> int:
        return self.fid.n_layers

    # ---- tokenisation ----------------------------------------------------------------
    def tokenize_passages(self, queries: list[str], passages: list[list[Passage]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reader inputs: (B, K, L) input ids and attention mask, L = the longest (truncated) in the batch."""
        K = len(passages[0])
        if any(len(row) != K for row in passages):
            raise ValueError("every query needs the same number K of passages")
        texts = [
            self.text_format.format_reader_input(q, p) for q, row in zip(queries, passages, strict=True) for p in row
        ]
        batch = self.tokenizer(
            texts, truncation=True, max_length=self.passage_max_length, padding=True, return_tensors="pt"
        )
        shape = (len(queries), K, -1)
        return batch["input_ids"].view(shape).to(self.device), batch["attention_mask"].view(shape).to(self.device)

    def labels(self, examples: list[Example]) -> torch.Tensor:
        """(B, T) labels: each example's first non-blank answer is its training target."""
        return self.tokenize_targets([example.target for example in examples])

    def tokenize_targets(self, answers: list[str]) -> torch.Tensor:
        """(B, T) labels: the target tokens then end-of-sequence, -100 after it."""
        rows = []
        for answer in answers:
            ids = self.tokenizer(self.text_format.format_target(answer), add_special_tokens=False)["input_ids"]
            rows.append([*ids[: self.target_max_length - 1], self.eos_id])
        labels = torch.full((len(rows), max(map(len, rows))), -100, dtype=torch.long)
        for row, ids in enumerate(rows):
            labels[row, : len(ids)] = torch.tensor(ids)
        return labels.to(self.device)

    # ---- model passes ----------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, L) passages -> FiD encoder states (B, K·L, H) and their mask (B, K·L)."""
        B, K, L = input_ids.shape
        states = self.model.encoder(
            input_ids=input_ids.view(B * K, L), attention_mask=attention_mask.view(B * K, L)
        ).last_hidden_state
        return states.reshape(B, K * L, -1), attention_mask.reshape(B, K * L)

    def decoder_hidden(
        self,
        states: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        n_passages: int,
        collect_mass: bool = False,
    ) -> torch.Tensor:
        """(B, T, H): the decoder's last hidden states over FiD encoder states of ``n_passages`` passages.

        ``collect_mass``: also compute the ADist mass, readable afterwards as ``self.fid.passage_mass()``.
        """
        decoder = self.model.decoder if self.is_t5 else self.model.decoder.bert
        with self.fid.forward_settings(n_passages, collect_mass):
            return decoder(
                input_ids=decoder_input_ids, encoder_hidden_states=states, encoder_attention_mask=attention_mask
            ).last_hidden_state

    def lm_head_features(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (..., H'), weight (V, H')) with logits = features @ weightᵀ, for the fused gold scores.

        T5: the decoder output scaled as Hugging Face does, and lm_head. BERT: the prediction head's
        transform, with the output bias folded in as a constant-1 feature column.
        """
        if self.is_t5:
            return hidden * t5_lm_head_scale(self.model.config), self.model.lm_head.weight
        head = self.model.decoder.cls.predictions
        features = head.transform(hidden)
        features = torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)
        return features, torch.cat([head.decoder.weight, head.decoder.bias[:, None]], dim=1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., V) vocabulary logits of decoder hidden states."""
        if self.is_t5:
            return self.model.lm_head(hidden * t5_lm_head_scale(self.model.config))
        return self.model.decoder.cls(hidden)

    def shift_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: start token, then the labels shifted right (-100 -> pad)."""
        shifted = labels.new_full(labels.shape, self.pad_id)
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.pad_id)
        shifted[:, 0] = self.decoder_start_id
        return shifted

    def loss(
        self, states: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, n_passages: int
    ) -> torch.Tensor:
        """Token-mean cross-entropy of the targets over every valid token of the batch (Atlas's reader loss)."""
        hidden = self.decoder_hidden(states, attention_mask, self.shift_labels(labels), n_passages)
        logits = self.logits(hidden)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)

    @torch.no_grad()
    def gold_scores(
        self,
        mode: str,
        states: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        n_passages: int,
        temperature_gold: float = 0.01,
    ) -> torch.Tensor:
        """The reader's judgement of each of the K passages of each example: the retriever loss's target.

        Runs in eval mode under no_grad, as Atlas does. FiD encodes each passage independently, so
        the same encoder states serve the single-passage passes of PDist/EMDR² and the full FiD
        passes of ADist/LOOP.

        Args:
            mode: "pdist", "adist", "loop" or "emdr".
            states: (B, K·L, H) FiD encoder states (eval mode); attention_mask (B, K·L).
            labels: (B, T), -100 = padding.
            n_passages: K.

        Returns:
            (B, K) float32 for pdist/adist/loop; (B, K, T) token log-probabilities for emdr.
        """
        B, KL, H = states.shape
        K = n_passages
        with eval_mode(self):
            if mode == "loop":
                return loop_gold_scores(self.model, states, attention_mask, labels, K)
            if mode == "adist":
                self.decoder_hidden(states, attention_mask, self.shift_labels(labels), K, collect_mass=True)
                return adist_gold_scores(self.fid.passage_mass(), labels, self.n_decoder_layers)
            # PDist and EMDR²: each passage alone with the query, a batch of B·K.
            single_labels = labels.repeat_interleave(K, dim=0)
            hidden = self.decoder_hidden(
                states.reshape(B * K, KL // K, H),
                attention_mask.reshape(B * K, KL // K),
                self.shift_labels(single_labels),
                1,
            )
            features, weight = self.lm_head_features(hidden.view(B, K, *hidden.shape[1:]))
            if mode == "pdist":
                return pdist_gold_scores(features.float(), weight.float(), labels)
            return emdr_token_logprobs(features.float(), weight.float(), labels, temperature_gold)

    def retriever_loss(
        self,
        mode: str,
        scores: torch.Tensor,
        states: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        *,
        temperature_score: float,
        temperature_gold: float,
    ) -> torch.Tensor:
        """The retriever's loss against this reader's `gold_scores` of its K passages (the reader teaches the
        retriever): EMDR²'s log-likelihood for "emdr", else the KL divergence of the softmaxed scores.

        Args:
            mode: "pdist", "adist", "loop" or "emdr".
            scores: (B, K) retrieval scores, differentiable in the retriever.
            states: (B, K·L, H) FiD encoder states (eval mode, detached); attention_mask (B, K·L).
            labels: (B, T), -100 = padding.

        Returns:
            a scalar, differentiable in ``scores`` only.
        """
        K = scores.shape[1]
        gold = self.gold_scores(mode, states, attention_mask, labels, K, temperature_gold)
        if mode == "emdr":
            return emdr_loss(scores, gold, labels, temperature_score)
        return kldivloss(scores, gold, temperature_score, temperature_gold)

    @torch.no_grad()
    def generate(self, states: torch.Tensor, attention_mask: torch.Tensor, n_passages: int) -> list[str]:
        """Greedy answers, at most ``target_max_length`` tokens each."""
        B = states.shape[0]
        tokens = torch.full((B, 1), self.decoder_start_id, dtype=torch.long, device=states.device)
        finished = torch.zeros(B, dtype=torch.bool, device=states.device)
        for _ in range(self.target_max_length):
            hidden = self.decoder_hidden(states, attention_mask, tokens, n_passages)[:, -1]
            next_token = self.logits(hidden).argmax(-1).masked_fill(finished, self.pad_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == self.eos_id
            if finished.all():
                break
        answers = self.tokenizer.batch_decode(tokens[:, 1:], skip_special_tokens=True)
        return [self._strip_target_template(answer) for answer in answers]

    def _strip_target_template(self, text: str) -> str:
        prefix = self.text_format.target.split("{answer}")[0].strip()
        return text.strip().removeprefix(prefix).strip()


def _cross_attention_from_self_attention(layers) -> None:
    """Copy each decoder layer's self-attention weights into its fresh cross-attention.

    The pretrained self-attention already projects these hidden states into useful query/key/value
    spaces; starting cross-attention there instead of at random lets a reader learn to attend to
    (and copy from) the passages within CPU-minutes.
    """
    with torch.no_grad():
        for layer in layers:
            source, target = layer.attention, layer.crossattention
            for name in ("query", "key", "value"):
                getattr(target.self, name).load_state_dict(getattr(source.self, name).state_dict())
            target.output.load_state_dict(source.output.state_dict())


def _share_encoder_embeddings(model) -> None:
    """Make the BERT decoder's input embeddings and LM-head weight the encoder's word embeddings.

    The LM head keeps its own bias and transform. Hugging Face re-ties the head to the decoder's
    input embeddings on ``tie_weights()``, which now is the shared module too.
    """
    shared = model.encoder.embeddings.word_embeddings
    model.decoder.bert.embeddings.word_embeddings = shared
    model.decoder.cls.predictions.decoder.weight = shared.weight
