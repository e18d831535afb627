"""The Index contract (atlas_fast/index/protocol.py), one suite for every implementation.

Each check builds its index through a factory and makes the same calls on DocumentIndex,
TorchDocumentIndex (CPU tensors) and ShardedIndex over 2 gloo ranks, where every rank makes every
call (collectively) and brings its own share of the documents: the answers are the whole index's.
"""

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.index import DocumentIndex, Index, ShardedIndex, TorchDocumentIndex, load_index

N, DIM = 50, 8
IDS = np.random.default_rng(0).permutation(1000)[:N]
VECTORS = np.random.default_rng(1).standard_normal((N, DIM)).astype(np.float32)
QUERIES = np.random.default_rng(2).standard_normal((4, DIM)).astype(np.float32)


class Setting:
    """How one implementation is built and reloaded, and this process's rank among those sharing it."""

    def __init__(self, kind: str, rank: int = 0, world_size: int = 1):
        self.kind, self.rank, self.world_size = kind, rank, world_size

    def empty(self) -> Index:
        if self.kind == "sharded":
            return ShardedIndex(DIM)
        return DocumentIndex(DIM) if self.kind == "host" else TorchDocumentIndex(DIM, "float32", "cpu")

    def filled(self, step: int = 0) -> Index:
        """The N documents, each rank upserting its share (every world_size-th row from its rank)."""
        index = self.empty()
        index.upsert(IDS[self.rank :: self.world_size], VECTORS[self.rank :: self.world_size], step=step)
        return index

    def reload(self, index: Index, path) -> Index:
        index.save(path)
        device = "cpu" if self.kind == "torch" else None
        return load_index(path, device=device, distributed=self.kind == "sharded")


def check_upsert_get_contains(setting: Setting, _):
    index = setting.filled()
    assert isinstance(index, Index) and len(index) == N and index.dim == DIM and index.dtype == "float32"
    np.testing.assert_array_equal(index.get(IDS), VECTORS)
    assert index.contains(np.array([IDS[0], 5000])).tolist() == [True, False]
    assert sorted(index.ids().tolist()) == sorted(IDS.tolist())
    index.upsert(IDS[:2] if setting.rank == 0 else IDS[:0], -VECTORS[:2] if setting.rank == 0 else VECTORS[:0], step=3)
    np.testing.assert_array_equal(index.get(IDS[:2]), -VECTORS[:2])  # overwritten in place
    assert index.step_of(IDS[:3]).tolist() == [3, 3, 0] and len(index) == N


def check_search_is_exact_and_pads(setting: Setting, _):
    index = setting.filled()
    scores, ids = index.search(QUERIES, 5)
    exact = QUERIES @ VECTORS.T
    order = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, IDS[order])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, axis=1), rtol=1e-5)
    scores, ids = index.search(QUERIES[:1], N + 3)  # k above the size: -1 and -inf pad
    assert (ids[0, N:] == -1).all() and np.isneginf(scores[0, N:]).all()


def check_remove(setting: Setting, _):
    index = setting.filled()
    index.remove(IDS[:5] if setting.rank == 0 else IDS[:0])
    assert len(index) == N - 5 and not index.contains(IDS[:5]).any()
    with pytest.raises(KeyError):
        index.remove(np.array([5000]) if setting.rank == 0 else IDS[:0])
    assert len(index) == N - 5


def check_bad_input_changes_nothing(setting: Setting, _):
    index = setting.filled()
    bad = VECTORS[:2].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.upsert(np.array([7000, 7001]), bad)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(QUERIES, 0)
    assert len(index) == N and not index.contains(np.array([7000])).any()


def check_staleness_is_this_shards(setting: Setting, _):
    index = setting.filled(step=1)
    index.upsert(IDS[:10] if setting.rank == 0 else IDS[:0], VECTORS[:10] if setting.rank == 0 else VECTORS[:0], 4)
    stale = index.stale_ids(5, "oldest")  # this rank's shard (the whole index when unsharded)
    steps = index.step_of(IDS)
    held = set(index.local.ids().tolist()) if setting.kind == "sharded" else set(IDS.tolist())
    assert set(stale.tolist()) <= held and len(stale) == min(5, len(held))
    oldest = sorted((steps[IDS.tolist().index(i)], i) for i in held)[:5]
    assert stale.tolist() == [i for _, i in oldest]
    index.record_retrieved(np.array([[IDS[-1], -1]]))
    assert index.stale_ids(1, "hot").tolist() == ([IDS[-1]] if IDS[-1] in held else [oldest[0][1]])


def check_transform_and_drift(setting: Setting, _):
    index = setting.filled()
    index.transform(2 * np.eye(DIM), older_than=1)  # every rank maps its own shard's rows
    np.testing.assert_allclose(index.get(IDS), 2 * VECTORS, rtol=1e-6)
    index.upsert(IDS[setting.rank :: setting.world_size], VECTORS[setting.rank :: setting.world_size], step=1)
    mean_cosine, overwritten = index.drift()
    assert overwritten == N and mean_cosine == pytest.approx(1.0, abs=1e-6)


def check_save_load_keeps_rows_steps_counts_and_metadata(setting: Setting, directory):
    index = setting.filled(step=2)
    index.record_retrieved(IDS[:3])
    index.metadata.update(passages_fingerprint="abc", retriever_fingerprint="def")
    path = directory / ("sharded" if setting.kind == "sharded" else "index.afi")
    loaded = setting.reload(index, path)
    np.testing.assert_array_equal(loaded.get(IDS), VECTORS)
    assert loaded.step_of(IDS).tolist() == [2] * N
    assert loaded.metadata == {"passages_fingerprint": "abc", "retriever_fingerprint": "def"}
    held = set(loaded.local.ids().tolist()) if setting.kind == "sharded" else set(IDS.tolist())
    retrieved = {i for i in IDS[:3].tolist() if i in held}  # their retrieval counts survived: "hot" puts them first
    assert set(loaded.stale_ids(N, "hot")[: len(retrieved)].tolist()) == retrieved


CHECKS = [value for name, value in sorted(globals().items()) if name.startswith("check_")]


@pytest.mark.parametrize("kind", ["host", "torch"])
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_single_process_index(kind, check, tmp_path):
    check(Setting(kind), tmp_path)


def _every_check_on_a_rank(rank, world_size, rendezvous, directory):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        for check in CHECKS:
            try:
                check(Setting("sharded", rank, world_size), directory)
            except Exception as error:
                raise AssertionError(f"rank {rank}, {check.__name__}: {error!r}") from error
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_index_over_two_gloo_ranks(tmp_path):
    mp.spawn(_every_check_on_a_rank, args=(2, tmp_path / "rendezvous", tmp_path), nprocs=2)
