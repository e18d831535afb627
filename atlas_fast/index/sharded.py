"""ShardedIndex: one DocumentIndex per torch.distributed rank, searched as one index.

Document ``d`` lives on rank ``d mod world_size``. Every method is collective: all
ranks call it together, each with its own (possibly empty) batch. Only embeddings,
ids and scores cross ranks — never passage text: search all-gathers the queries,
each rank searches its shard, the per-shard (score, id) top-k lists are
all-gathered and each rank merges those of its own queries with the C++
`merge_topk`. Tensors travel on the device the backend needs (CUDA for NCCL, CPU
for gloo).

Files: `save(directory)` writes one DocumentIndex file per rank plus a manifest;
`load` reads every shard file and keeps the documents the reading rank owns, so a
directory written by N ranks loads on any number of ranks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from atlas_fast.index.document_index import DocumentIndex, IndexFileError, _as_ids, _as_k, _as_matrix, _as_step
from atlas_fast.index.merge import merge_topk
from atlas_fast.index.torch_index import TorchDocumentIndex

__all__ = ["ShardedIndex"]

_MANIFEST = "manifest.json"


class ShardedIndex:
    """A DocumentIndex sharded over the ranks of a torch.distributed process group.

    Args:
        dim: embedding size d.
        dtype: storage precision of every shard.
        group: the process group (default: the world).
        device: None keeps this rank's shard in host memory (DocumentIndex); a torch device
            keeps it there (TorchDocumentIndex, e.g. the rank's GPU). Ranks may differ.
    """

    def __init__(
        self,
        dim: int,
        dtype: str = "float32",
        group: dist.ProcessGroup | None = None,
        device: str | torch.device | None = None,
    ):
        if not dist.is_initialized():
            raise RuntimeError("ShardedIndex needs torch.distributed to be initialised (init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        # The shard: host memory (C++ DocumentIndex), or a torch tensor on ``device`` (TorchDocumentIndex).
        self.local = DocumentIndex(dim, dtype) if device is None else TorchDocumentIndex(dim, dtype, device)
        backend = dist.get_backend(group)
        self._device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    @property
    def dim(self) -> int:
        return self.local.dim

    def owner(self, ids: np.ndarray) -> np.ndarray:
        """The rank that holds each id."""
        return np.mod(ids, self.world_size)

    def _all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``array`` (same dtype and trailing shape, any length), in rank order."""
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self._device)
        length = torch.tensor([tensor.shape[0]], device=self._device)
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        dist.all_gather(lengths, length, group=self.group)
        longest = int(max(int(n) for n in lengths))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=self._device)
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded, group=self.group)
        return [part[: int(n)].cpu().numpy() for part, n in zip(gathered, lengths, strict=True)]

    def _any_rank(self, flag: bool) -> bool:
        value = torch.tensor([int(flag)], device=self._device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def __len__(self) -> int:
        total = torch.tensor([len(self.local)], device=self._device)
        dist.all_reduce(total, group=self.group)
        return int(total.item())

    def _agreed(self, validate):
        """``validate()``'s result; when it raises ValueError on any rank, every rank raises before a collective.

        So bad input on one rank never leaves the others waiting in an all-gather.
        """
        try:
            result, error = validate(), None
        except ValueError as raised:
            result, error = None, raised
        if self._any_rank(error is not None):
            raise error if error is not None else ValueError("invalid input on another rank (it reports why)")
        return result

    def _checked_batch(self, ids, vectors, step) -> tuple[np.ndarray, np.ndarray, int]:
        """The checks of DocumentIndex.upsert, made before anything is gathered."""
        ids = _as_ids("ids", ids)
        vectors = _as_matrix("vectors", vectors, self.dim)
        if vectors.shape[0] != ids.shape[0]:
            raise ValueError(f"vectors has {vectors.shape[0]} rows but ids has {ids.shape[0]}")
        if (ids == -1).any():
            raise ValueError("ids must not contain -1, which marks padding in search results")
        return ids, vectors, _as_step(step)

    def upsert(self, ids, vectors, step: int = 0) -> None:
        """Collective upsert; each rank passes its own batch. Across ranks, later ranks win on duplicate ids."""
        ids, vectors, step = self._agreed(lambda: self._checked_batch(ids, vectors, step))
        all_ids = np.concatenate(self._all_gather(ids))
        all_vectors = np.concatenate(self._all_gather(vectors))
        mine = self.owner(all_ids) == self.rank
        self.local.upsert(all_ids[mine], all_vectors[mine], step)

    def remove(self, ids) -> None:
        """Collective remove; an id absent everywhere raises KeyError on every rank and nothing is removed."""
        ids = self._agreed(lambda: _as_ids("ids", ids))
        all_ids = np.unique(np.concatenate(self._all_gather(ids)))
        mine = all_ids[self.owner(all_ids) == self.rank]
        present = self.local.contains(mine)
        if self._any_rank(not present.all()):
            raise KeyError(f"ids not in the index (on this rank: {mine[~present][:10].tolist()})")
        self.local.remove(mine)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Collective exact search; each rank gets the global top-k of its own queries.

        Args:
            queries: (q, d) this rank's queries (q may differ between ranks, or be 0).
            k: results per query.

        Returns:
            scores float32 (q, k), ids int64 (q, k), as DocumentIndex.search.
        """
        queries, k = self._agreed(lambda: (_as_matrix("queries", queries, self.dim), _as_k(k)))
        per_rank = self._all_gather(queries)
        counts = [part.shape[0] for part in per_rank]
        scores, ids = self.local.search(np.concatenate(per_rank), k)
        all_scores = self._all_gather(scores)  # each: (Σ q, k) from one shard
        all_ids = self._all_gather(ids)
        start = sum(counts[: self.rank])
        rows = slice(start, start + counts[self.rank])
        return merge_topk([s[rows] for s in all_scores], [i[rows] for i in all_ids], k)

    def save(self, directory: str | os.PathLike) -> None:
        """Collective save: one shard file per rank and a manifest, each written atomically."""
        directory = Path(directory)
        if self.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
        dist.barrier(group=self.group)
        self.local.save(directory / f"shard-{self.rank:05d}.afi")
        dist.barrier(group=self.group)
        if self.rank == 0:
            manifest = {"world_size": self.world_size, "dim": self.dim, "dtype": self.local.dtype}
            temporary = directory / f".{_MANIFEST}.tmp"
            temporary.write_text(json.dumps(manifest))
            os.replace(temporary, directory / _MANIFEST)
        dist.barrier(group=self.group)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        group: dist.ProcessGroup | None = None,
        device: str | torch.device | None = None,
    ) -> ShardedIndex:
        """Collective load of a directory written by `save` with any number of ranks (``device``: as for __init__)."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / _MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise IndexFileError(f"{directory}: no readable {_MANIFEST} ({error})") from error
        index = cls(int(manifest["dim"]), manifest["dtype"], group, device)
        for shard in range(int(manifest["world_size"])):
            part = DocumentIndex.load(directory / f"shard-{shard:05d}.afi")
            ids = part.ids()
            mine = ids[index.owner(ids) == index.rank]
            if mine.size:
                steps = part.step_of(mine)
                for step in np.unique(steps):
                    chosen = mine[steps == step]
                    index.local.upsert(chosen, part.get(chosen), int(step))
        dist.barrier(group=index.group)
        return index
