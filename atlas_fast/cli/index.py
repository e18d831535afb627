"""`atlas-fast index build|search|info`: a DocumentIndex over an Atlas passages file from the command line.

The CLI layer: it joins the index to the models (the retriever embeds) and the data (the passages file),
which atlas_fast.index itself does not depend on.

Document ids are the passages' row numbers in the jsonl file (0-based), so the
same passages file maps search results back to text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atlas_fast._hashing import file_sha256, passages_sha256, weights_sha256
from atlas_fast.data.formats import read_passages
from atlas_fast.index.document_index import INDEX_MAGIC, DocumentIndex
from atlas_fast.models.retriever import Retriever, packaged_minilm_path
from atlas_fast.train.config import ConfigError

__all__ = ["build_index", "index_info", "search_index"]


def _retriever(path: str | None) -> Retriever:
    return Retriever.from_pretrained(Path(path) if path else packaged_minilm_path())


def _check_writable(output: Path, passages: Path) -> None:
    """Fail before hours of embedding, not after: the index file must be creatable at ``output``, and only an
    earlier index may be replaced there (never the passages file, nor any other file)."""
    if output.is_dir():
        raise ConfigError(f"{output}: is a directory; give the index file's path")
    if not output.parent.is_dir():
        raise ConfigError(f"{output}: its folder {output.parent} does not exist")
    if output.exists() and passages.exists() and output.samefile(passages):
        raise ConfigError(f"{output}: is the passages file itself; give the index another path")
    if output.exists():
        with open(output, "rb") as file:
            if file.read(len(INDEX_MAGIC)) != INDEX_MAGIC:
                raise ConfigError(f"{output}: exists and is not an atlas_fast index; not replacing it")
    if not os.access(output.parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise ConfigError(f"{output}: not writable")


def build_index(
    passages: str | os.PathLike,
    output: str | os.PathLike,
    retriever: str | None = None,
    dtype: str = "float32",
    batch_size: int = 128,
) -> DocumentIndex:
    """Embed every passage (``{title} {text}``) and save the index to ``output``, with the fingerprints of the
    passages and the retriever (search refuses other passages, or another retriever)."""
    _check_writable(Path(output), Path(passages))
    rows = read_passages(passages)
    encoder = _retriever(retriever)
    texts = [Retriever.passage_text(p) for p in rows]
    vectors = encoder.embed_passages_for_index(texts, batch_size=batch_size, progress=True)
    index = DocumentIndex(encoder.dim, dtype)
    index.upsert(np.arange(len(rows)), vectors)
    index.metadata |= {"passages_fingerprint": passages_sha256(rows), "retriever_fingerprint": weights_sha256(encoder)}
    index.save(output)
    return index


def search_index(
    index_path: str | os.PathLike,
    passages: str | os.PathLike,
    queries: list[str],
    k: int = 5,
    retriever: str | None = None,
) -> list[list[tuple[float, str, str]]]:
    """(score, passage id, title) of the top-k passages of each query."""
    index = DocumentIndex.load(index_path)
    rows = read_passages(passages)
    legacy = index.metadata.get("passages_sha256")  # what indexes built before passages_fingerprint record
    if legacy is not None and file_sha256(passages) != legacy:
        raise ConfigError(f"{passages} is not the passages file {index_path} was built from (its sha256 differs)")
    fingerprint = index.metadata.get("passages_fingerprint")
    if fingerprint is not None and passages_sha256(rows) != fingerprint:
        raise ConfigError(
            f"{passages} does not hold the passages {index_path} was built over (other passages, or the same reordered "
            "or cut): search with those, or build an index of these"
        )
    if len(rows) < len(index):
        raise ConfigError(f"{passages} has {len(rows)} passages but the index holds {len(index)}: not its passages")
    if not 0 < k <= len(index):
        raise ConfigError(f"k must be between 1 and the {len(index)} indexed documents; got {k}")
    encoder = _retriever(retriever).eval()
    built_by = index.metadata.get("retriever_fingerprint")
    if built_by is not None and weights_sha256(encoder) != built_by:
        raise ConfigError(
            f"{index_path} was embedded by another retriever than {retriever or 'the packaged MiniLM'} (its weights "
            "differ): its scores would be meaningless; search with --retriever set to the one that built it (a "
            "checkpoint's index: atlas-fast evaluate the checkpoint)"
        )
    import torch

    with torch.no_grad():
        scores, ids = index.search(encoder.embed_queries(queries).numpy(), k)
    return [
        [(float(s), rows[i].id, rows[i].title) for s, i in zip(srow, irow, strict=True)]
        for srow, irow in zip(scores, ids, strict=True)
    ]


def index_info(index_path: str | os.PathLike) -> dict:
    """Size, precision, memory and the embedding-age spread of an index file."""
    index = DocumentIndex.load(index_path)
    steps = index.step_of(index.ids()) if len(index) else np.zeros(0, dtype=np.int64)
    return {
        "documents": len(index),
        "dim": index.dim,
        "dtype": index.dtype,
        "memory_mib": round(index.memory_bytes() / 2**20, 2),
        "embedding_step_min": int(steps.min()) if steps.size else None,
        "embedding_step_max": int(steps.max()) if steps.size else None,
        **index.metadata,
    }
