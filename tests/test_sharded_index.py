"""ShardedIndex over 2 gloo ranks on CPU: identical to one DocumentIndex over the same documents."""

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.index import DocumentIndex, ShardedIndex

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

N, DIM, K = 600, 16, 20


def _corpus():
    rng = np.random.default_rng(0)
    return rng.permutation(10**5)[:N], rng.standard_normal((N, DIM)).astype(np.float32)


def _queries(rank):
    return np.random.default_rng(100 + rank).standard_normal((3 + 4 * rank, DIM)).astype(np.float32)


def _reference():
    ids, vectors = _corpus()
    index = DocumentIndex(DIM)
    index.upsert(ids, vectors)
    index.remove(ids[:10])
    return index


def _init(rank, world_size, rendezvous):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)


def _build_and_save(rank, world_size, rendezvous, directory):
    _init(rank, world_size, rendezvous)
    try:
        ids, vectors = _corpus()
        sharded = ShardedIndex(DIM)
        part = slice(rank * N // world_size, (rank + 1) * N // world_size)  # each rank brings a slice
        sharded.upsert(ids[part], vectors[part])
        assert len(sharded) == N
        assert (sharded.owner(sharded.local.ids()) == rank).all()
        sharded.remove(ids[:10] if rank == 0 else ids[:0])
        with pytest.raises(KeyError):
            sharded.remove(np.array([-5]) if rank == 1 else ids[:0])
        assert len(sharded) == N - 10
        scores, found = sharded.search(_queries(rank), K)
        want_scores, want_ids = _reference().search(_queries(rank), K)
        np.testing.assert_array_equal(found, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
        sharded.save(directory)
    finally:
        dist.destroy_process_group()


def _load_and_search(rank, world_size, rendezvous, directory):
    _init(rank, world_size, rendezvous)
    try:
        sharded = ShardedIndex.load(directory)
        assert len(sharded) == N - 10
        _, found = sharded.search(_queries(rank), K)
        np.testing.assert_array_equal(found, _reference().search(_queries(rank), K)[1])
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_index_and_files_outlive_the_world_size(tmp_path):
    directory = tmp_path / "index"
    mp.spawn(_build_and_save, args=(2, tmp_path / "rendezvous-a", directory), nprocs=2, join=True)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "shard-00000.afi", "shard-00001.afi"]
    mp.spawn(_load_and_search, args=(1, tmp_path / "rendezvous-b", directory), nprocs=1, join=True)
    mp.spawn(_load_and_search, args=(2, tmp_path / "rendezvous-c", directory), nprocs=2, join=True)
