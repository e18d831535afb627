"""ShardedIndex: one DocumentIndex per torch.distributed rank, searched as one index.

Document ``d`` lives on rank ``d mod world_size``. Every method is collective: all
ranks call it together, each with its own (possibly empty) batch. Only embeddings,
ids and scores cross ranks — never passage text: search all-gathers the queries,
each rank searches its shard, the per-shard (score, id) top-k lists are
all-gathered and each rank merges those of its own queries with the C++
`merge_topk`. Tensors travel on the device the backend needs (CUDA for NCCL, CPU
for gloo).

It implements the whole `Index` contract. Lookups (`contains`, `get`, `step_of`) are
answered by each id's owner; `record_retrieved` counts a retrieval on the owner's shard
whichever rank retrieved it; `ids`, `len`, `drift` and `memory_bytes` cover every shard.
`stale_ids` and `transform` are not collective: they name and correct this rank's own
documents, which this rank re-embeds.

Files: `save(directory)` writes one DocumentIndex file per rank plus a manifest;
`load` reads every shard file and keeps the documents the reading rank owns, with their
steps and retrieval counts, so a directory written by N ranks loads on any number of ranks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from atlas_fast.index.arguments import as_ids, as_integer_array, as_k, as_matrix, as_step
from atlas_fast.index.document_index import DocumentIndex, IndexFileError, append_rows_where
from atlas_fast.index.merge_topk import merge_topk
from atlas_fast.index.torch_index import TorchDocumentIndex

__all__ = ["ShardedIndex", "read_shards"]

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
        self.metadata: dict[str, str] = {}  # the whole index's, saved in its manifest (rank 0's)
        backend = dist.get_backend(group)
        self._device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    @property
    def dim(self) -> int:
        return self.local.dim

    @property
    def dtype(self) -> str:
        return self.local.dtype

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

    def _sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of every rank's ``values`` (same shape on every rank)."""
        tensor = torch.from_numpy(np.ascontiguousarray(values)).to(self._device)
        dist.all_reduce(tensor, group=self.group)
        return tensor.cpu().numpy()

    def __len__(self) -> int:
        return int(self._sum(np.array([len(self.local)], dtype=np.int64))[0])

    def _from_owners(self, ids: np.ndarray, values_of, width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """For this rank's ``ids``: (present (n,) bool, values (n, width)), each answered by the id's owner
        with ``values_of(present owned ids)``. Every position is filled by one rank at most, so the sum of
        the ranks' answers is exact."""
        per_rank = self._all_gather(ids)
        all_ids = np.concatenate(per_rank)
        owned = np.flatnonzero(self.owner(all_ids) == self.rank)
        present = np.zeros(all_ids.size, dtype=np.int64)
        present[owned] = self.local.contains(all_ids[owned])
        values = np.zeros((all_ids.size, width), dtype=dtype)
        held = np.flatnonzero(present)
        if held.size:
            values[held] = np.asarray(values_of(all_ids[held])).reshape(held.size, width)
        start = sum(part.size for part in per_rank[: self.rank])
        rows = slice(start, start + ids.size)
        return self._sum(present)[rows].astype(bool), self._sum(values)[rows]

    def _present_values(self, ids, values_of, width: int, dtype) -> np.ndarray:
        """`_from_owners` where every id must be present: KeyError on every rank when one is absent anywhere."""
        ids = self._agreed(lambda: as_ids("ids", ids))
        present, values = self._from_owners(ids, values_of, width, dtype)
        if self._any_rank(not present.all()):
            raise KeyError(f"ids not in the index (on this rank: {ids[~present][:10].tolist()})")
        return values

    def contains(self, ids) -> np.ndarray:
        """(n,) bool for this rank's ids: whether any shard holds each."""
        ids = self._agreed(lambda: as_ids("ids", ids))
        return self._from_owners(ids, lambda held: np.zeros((held.size, 1)), 1, np.float32)[0]

    def get(self, ids) -> np.ndarray:
        """(n, d) float32 vectors of this rank's ids, from their owners (KeyError everywhere if one is absent)."""
        return self._present_values(ids, self.local.get, self.dim, np.float32)

    def step_of(self, ids) -> np.ndarray:
        """(n,) int32 embedding step of this rank's ids, from their owners (KeyError everywhere if one is absent)."""
        return self._present_values(ids, self.local.step_of, 1, np.int64).reshape(-1).astype(np.int32)

    def ids(self) -> np.ndarray:
        """(N,) int64 every id of every shard, sorted."""
        return np.sort(np.concatenate(self._all_gather(self.local.ids())))

    def record_retrieved(self, ids) -> None:
        """Count a retrieval of each of this rank's ids (any shape) on the shard that owns it."""
        ids = self._agreed(lambda: as_integer_array("ids", ids).reshape(-1))
        retrieved = np.concatenate(self._all_gather(ids[ids != -1]))
        self.local.record_retrieved(retrieved[self.owner(retrieved) == self.rank])

    def stale_ids(self, budget: int, policy: str = "oldest") -> np.ndarray:
        """This rank's shard's next ≤ budget ids to re-embed (not collective: each rank refreshes its own)."""
        return self.local.stale_ids(budget, policy)

    def transform(self, matrix, older_than: int, normalize: bool = False) -> int:
        """Map this rank's rows embedded before ``older_than`` through ``matrix`` (not collective: each rank
        corrects its own shard, with the map it fitted on its own documents). Returns the rows transformed."""
        return self.local.transform(matrix, older_than, normalize)

    def drift(self, reset: bool = True) -> tuple[float, int]:
        """Mean cosine of old and new vectors over every shard's overwritten documents, and their count."""
        mean, count = self.local.drift(reset)
        total, count = self._sum(np.array([mean * count, count], dtype=np.float64))
        return (float(total / count) if count else 0.0), int(count)

    def memory_bytes(self) -> int:
        """Bytes held by every shard together."""
        return int(self._sum(np.array([self.local.memory_bytes()], dtype=np.int64))[0])

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
        ids = as_ids("ids", ids)
        vectors = as_matrix("vectors", vectors, self.dim)
        if vectors.shape[0] != ids.shape[0]:
            raise ValueError(f"vectors has {vectors.shape[0]} rows but ids has {ids.shape[0]}")
        if (ids == -1).any():
            raise ValueError("ids must not contain -1, which marks padding in search results")
        return ids, vectors, as_step(step)

    def upsert(self, ids, vectors, step: int = 0) -> None:
        """Collective upsert; each rank passes its own batch. Across ranks, later ranks win on duplicate ids."""
        ids, vectors, step = self._agreed(lambda: self._checked_batch(ids, vectors, step))
        all_ids = np.concatenate(self._all_gather(ids))
        all_vectors = np.concatenate(self._all_gather(vectors))
        mine = self.owner(all_ids) == self.rank
        self.local.upsert(all_ids[mine], all_vectors[mine], step)

    def remove(self, ids) -> None:
        """Collective remove; an id absent everywhere raises KeyError on every rank and nothing is removed."""
        ids = self._agreed(lambda: as_ids("ids", ids))
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
        queries, k = self._agreed(lambda: (as_matrix("queries", queries, self.dim), as_k(k)))
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
            manifest["metadata"] = self.metadata
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
        """Collective load of a directory written by `save` with any number of ranks, or of one process's index file
        (``device``: as for __init__)."""
        if not dist.is_initialized():
            raise RuntimeError("ShardedIndex needs torch.distributed to be initialised (init_process_group)")
        rank, world_size = dist.get_rank(group), dist.get_world_size(group)
        shard = read_shards(directory, lambda ids: np.mod(ids, world_size) == rank)
        index = cls(shard.dim, shard.dtype, group, None)
        index.local = shard if device is None else TorchDocumentIndex.from_document_index(shard, device)
        index.metadata = dict(shard.metadata)
        dist.barrier(group=index.group)
        return index


def read_shards(directory: str | os.PathLike, keep=None) -> DocumentIndex:
    """One DocumentIndex of the rows of a directory written by `ShardedIndex.save` that ``keep(ids) -> bool mask``
    selects (all rows when None), with their steps and retrieval counts. ``directory`` may also be one index file
    (a one-process run's): its rows are selected the same way.

    Raises:
        IndexFileError: no valid manifest, or a shard file that does not verify.
    """
    directory = Path(directory)
    if directory.is_file():
        if keep is None:
            return DocumentIndex.load(directory)
        # Mapped: each rank copies only the rows it keeps, and the ranks share the file's pages.
        whole = DocumentIndex.map(directory)
        whole.verify()
        index = DocumentIndex(whole.dim, whole.dtype)
        index.metadata = dict(whole.metadata)
        append_rows_where(index, whole, keep)
        return index
    try:
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
        dim, dtype, world_size = manifest["dim"], manifest["dtype"], manifest["world_size"]
        metadata = manifest.get("metadata", {})
        if type(dim) is not int or type(world_size) is not int or world_size <= 0 or not isinstance(dtype, str):
            raise TypeError(f"invalid fields {manifest}")
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in (*metadata, *metadata.values())):
            raise TypeError("invalid metadata (expected a mapping of strings)")
        index = DocumentIndex(dim, dtype)
        index.metadata = dict(metadata)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise IndexFileError(f"{directory}: no readable {_MANIFEST} ({type(error).__name__}: {error})") from error
    for shard in range(world_size):
        part = DocumentIndex.load(directory / f"shard-{shard:05d}.afi")
        append_rows_where(index, part, keep if keep is not None else (lambda ids: np.ones(ids.shape, dtype=bool)))
    return index
