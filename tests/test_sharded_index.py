"""ShardedIndex over 2 gloo ranks on CPU: identical to one DocumentIndex over the same documents."""

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.index import DocumentIndex, Index, ShardedIndex, load_index, open_index
from atlas_fast.index.refresh import RefreshPolicy

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
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def _load_and_search(rank, world_size, rendezvous, directory):
    _init(rank, world_size, rendezvous)
    try:
        sharded = ShardedIndex.load(directory)
        assert len(sharded) == N - 10
        _, found = sharded.search(_queries(rank), K)
        np.testing.assert_array_equal(found, _reference().search(_queries(rank), K)[1])
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_index_and_files_outlive_the_world_size(tmp_path):
    directory = tmp_path / "index"
    mp.spawn(_build_and_save, args=(2, tmp_path / "rendezvous-a", directory), nprocs=2, join=True)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "shard-00000.afi", "shard-00001.afi"]
    mp.spawn(_load_and_search, args=(1, tmp_path / "rendezvous-b", directory), nprocs=1, join=True)
    mp.spawn(_load_and_search, args=(2, tmp_path / "rendezvous-c", directory), nprocs=2, join=True)


def _the_whole_contract(rank, world_size, rendezvous, directory):
    _init(rank, world_size, rendezvous)
    try:
        ids, vectors = _corpus()
        reference = DocumentIndex(DIM)
        reference.upsert(ids, vectors, step=3)
        sharded = open_index(DIM, distributed=True)
        assert isinstance(sharded, Index) and isinstance(sharded, ShardedIndex)
        part = slice(rank * N // world_size, (rank + 1) * N // world_size)
        sharded.upsert(ids[part], vectors[part], step=3)
        np.testing.assert_array_equal(sharded.ids(), np.sort(ids))
        # Lookups of ids that live on either rank are answered by their owners.
        asked = ids[rank::7][:30]
        np.testing.assert_array_equal(sharded.get(asked), reference.get(asked))
        np.testing.assert_array_equal(sharded.step_of(asked), reference.step_of(asked))
        np.testing.assert_array_equal(sharded.contains(np.array([asked[0], -5])), [True, False])
        with pytest.raises(KeyError):  # absent on one rank only: every rank raises, none is left waiting
            sharded.get(np.array([-5]) if rank == 1 else asked[:1])
        # Retrievals count on the owner's shard whichever rank retrieved them; "hot" follows the counts.
        hot = ids[:4] if rank == 0 else ids[2:6]
        sharded.record_retrieved(hot[None, :])
        reference.record_retrieved(np.concatenate([ids[:4], ids[2:6]]))
        local_ids = sharded.local.ids()
        local_reference = DocumentIndex(DIM)
        local_reference._core.append_raw(*reference._core.export_rows(0, len(reference)))
        want_hot = [i for i in local_reference.stale_ids(N, "hot") if i in set(local_ids.tolist())][:5]
        np.testing.assert_array_equal(sharded.stale_ids(5, "hot"), want_hot)
        # Drift and memory cover every shard.
        sharded.upsert(ids[part][-5:], -vectors[part][-5:], step=4)  # not the retrieved ones: counts stay
        mean, count = sharded.drift()
        assert count == 10 and mean == pytest.approx(-1.0, abs=1e-6)
        assert sharded.memory_bytes() > N * DIM * 4
        sharded.save(directory)
        again = load_index(directory, distributed=True)
        np.testing.assert_array_equal(again.local.ids(), local_ids)
        # Retrieval counts survive the file (a reload does not make every document cold again).
        np.testing.assert_array_equal(again.stale_ids(5, "hot"), sharded.stale_ids(5, "hot"))
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def test_sharded_index_implements_the_whole_index_contract(tmp_path):
    directory = tmp_path / "index"
    mp.spawn(_the_whole_contract, args=(2, tmp_path / "rendezvous", directory), nprocs=2, join=True)
    # One process reads every shard of the directory into one index, retrieval counts included.
    whole = load_index(directory)
    assert isinstance(whole, DocumentIndex) and len(whole) == N
    assert set(whole.stale_ids(6, "hot").tolist()) == set(_corpus()[0][:6].tolist())


def _accumulated_correction(rank, world_size, rendezvous, result):
    _init(rank, world_size, rendezvous)
    try:
        ids, vectors = _corpus()
        drift = np.eye(DIM, dtype=np.float32) + 0.1 * np.random.default_rng(9).standard_normal((DIM, DIM), np.float32)
        position = {int(doc): row for row, doc in enumerate(ids)}
        sharded = ShardedIndex(DIM)
        mine = ids[sharded.owner(ids) == rank]
        policy = RefreshPolicy(
            "incremental",
            sharded,
            lambda asked: vectors[[position[int(doc)] for doc in asked]] @ drift,
            lambda: mine,
            budget=3 + 2 * rank,  # ranks re-embed different numbers of documents
            corrector="linear",
            corrector_fit="accumulated",
        )
        sharded.upsert(mine, vectors[[position[int(doc)] for doc in mine]], step=0)
        first = [policy.ids_to_refresh(1)]
        policy.after_step(1)
        first.append(policy.ids_to_refresh(2))
        policy.after_step(2)
        everyone = [None] * world_size
        dist.all_gather_object(everyone, np.concatenate(first))
        if rank == 0:
            np.savez(result, applied=policy.applied, gram=policy.gram, pairs=np.concatenate(everyone))
        dist.barrier()
        if rank == 1:  # every rank applied the one map fitted on every rank's pairs
            np.testing.assert_array_equal(policy.applied, np.load(result)["applied"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_an_accumulated_corrector_pools_the_pairs_of_every_rank(tmp_path):
    result = tmp_path / "rank0.npz"
    mp.spawn(_accumulated_correction, args=(2, tmp_path / "rendezvous", result), nprocs=2, join=True)
    saved = np.load(result)
    ids, vectors = _corpus()
    pairs = vectors[[int(np.flatnonzero(ids == doc)[0]) for doc in saved["pairs"]]]
    assert len(pairs) == 2 * (3 + 5)  # both steps, both ranks
    np.testing.assert_allclose(saved["gram"], pairs.T.astype(np.float64) @ pairs, rtol=1e-4)


@pytest.mark.parametrize("kind", ["host", "torch"])
def test_single_process_indexes_implement_the_contract(tmp_path, kind):
    index = open_index(DIM, "float32", None if kind == "host" else "cpu")
    assert isinstance(index, Index)
    ids, vectors = _corpus()
    index.upsert(ids, vectors, step=2)
    index.record_retrieved(ids[:3])
    index.save(tmp_path / "index.afi")
    again = load_index(tmp_path / "index.afi", None if kind == "host" else "cpu")
    assert type(again) is type(index)
    np.testing.assert_array_equal(again.stale_ids(3, "hot"), index.stale_ids(3, "hot"))
    np.testing.assert_array_equal(again.get(ids[:5]), vectors[:5])
