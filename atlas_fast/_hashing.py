"""sha256 fingerprints: of a file (data wheels, checkpoints), of a list of passages, of a model's weights.

An index records the fingerprints of the passages and the retriever it was built from, so that it is never
searched over other passages (another file, reordered, truncated) or with another retriever without a word.
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at ``path`` (bounded memory whatever its size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def passages_sha256(passages) -> str:
    """Hex sha256 of passages (objects with id, title and text) in their order: an index's row numbers."""
    digest = hashlib.sha256()
    for passage in passages:
        for field in (passage.id, passage.title, passage.text):
            encoded = field.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little") + encoded)  # length-prefixed: no field runs into another
    return digest.hexdigest()


def weights_sha256(module) -> str:
    """Hex sha256 of a torch module's weights (or of a state dict): every entry's name, dtype, shape and bytes,
    by name."""
    import torch

    state = module if isinstance(module, dict) else module.state_dict()
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()
