"""TorchDocumentIndex: the CPU index's interface and results, rows in a torch tensor (CPU here; CUDA: `gpu`)."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas_fast.index import DocumentIndex, ShardedIndex, TorchDocumentIndex
from atlas_fast.reference.index_topk import MAX_ID

DIM = 12
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _history(index, rng):
    """The same sequence of operations for any index: inserts, overwrites, removals, retrievals."""
    ids = rng.permutation(10_000)[:400]
    vectors = rng.integers(-4, 5, (400, DIM)).astype(np.float32)  # exact scores, many ties
    index.upsert(ids, vectors)
    index.upsert(ids[:30], vectors[:30] * 2, step=4)
    index.upsert(np.array([ids[5], ids[5]]), np.stack([vectors[7], vectors[8]]), step=5)  # the last one wins
    index.remove(ids[100:160:2])
    index.record_retrieved(np.array([ids[200], ids[200], ids[201], -1]))
    return ids


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_same_results_as_the_cpu_index(device, dtype):
    gpu_resident, cpu = TorchDocumentIndex(DIM, dtype, device), DocumentIndex(DIM, dtype)
    ids = _history(gpu_resident, np.random.default_rng(0))
    _history(cpu, np.random.default_rng(0))
    assert len(gpu_resident) == len(cpu) == 370
    assert sorted(gpu_resident.ids()) == sorted(cpu.ids())
    queries = np.random.default_rng(1).integers(-4, 5, (9, DIM)).astype(np.float32)
    for k in (1, 10, 370, 400):
        got, want = gpu_resident.search(queries, k), cpu.search(queries, k)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    present = ids[:100]
    np.testing.assert_array_equal(gpu_resident.get(present), cpu.get(present))
    np.testing.assert_array_equal(gpu_resident.step_of(present), cpu.step_of(present))
    for policy in ("oldest", "hot"):
        np.testing.assert_array_equal(gpu_resident.stale_ids(50, policy), cpu.stale_ids(50, policy))
    assert gpu_resident.drift() == pytest.approx(cpu.drift())
    assert gpu_resident.contains(ids[100:104]).tolist() == [False, True, False, True]


@pytest.mark.parametrize("device", DEVICES)
def test_files_are_interchangeable_with_the_cpu_index(tmp_path, device):
    gpu_resident = TorchDocumentIndex(DIM, "bfloat16", device)
    _history(gpu_resident, np.random.default_rng(0))
    gpu_resident.save(tmp_path / "shard.afi")
    cpu = DocumentIndex.load(tmp_path / "shard.afi")
    np.testing.assert_array_equal(cpu.get(gpu_resident.ids()), gpu_resident.get(gpu_resident.ids()))
    np.testing.assert_array_equal(cpu.stale_ids(400, "hot"), gpu_resident.stale_ids(400, "hot"))
    back = TorchDocumentIndex.load(tmp_path / "shard.afi", device)
    queries = np.random.default_rng(2).standard_normal((4, DIM)).astype(np.float32)
    np.testing.assert_array_equal(back.search(queries, 20)[1], gpu_resident.search(queries, 20)[1])


def test_bad_input_is_refused_and_changes_nothing():
    index = TorchDocumentIndex(DIM, "float32", "cpu")
    index.upsert(np.arange(5), np.ones((5, DIM)))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 2\*\*32 - 1\)"):
        index.upsert(np.array([MAX_ID]), np.ones((1, DIM)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.upsert(np.array([9]), np.full((1, DIM), np.nan))
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        index.upsert(np.array([9]), np.ones((1, 3)))
    with pytest.raises(KeyError):
        index.remove(np.array([3, 77]))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones((1, DIM), np.float32), 0)
    assert len(index) == 5 and sorted(index.ids()) == [0, 1, 2, 3, 4]


def test_empty_index_pads():
    scores, ids = TorchDocumentIndex(DIM, "float16", "cpu").search(np.ones((2, DIM), np.float32), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()


def _mixed_shards(rank, world_size, rendezvous):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        sharded = ShardedIndex(DIM, "float32", device="cpu" if rank == 1 else None)  # one kind per rank
        assert isinstance(sharded.local, TorchDocumentIndex if rank == 1 else DocumentIndex)
        rng = np.random.default_rng(0)
        ids, vectors = rng.permutation(5000)[:300], rng.standard_normal((300, DIM)).astype(np.float32)
        sharded.upsert(ids[rank::2], vectors[rank::2])
        reference = DocumentIndex(DIM)
        reference.upsert(ids, vectors)
        queries = rng.standard_normal((3 + rank, DIM)).astype(np.float32)
        np.testing.assert_array_equal(sharded.search(queries, 15)[1], reference.search(queries, 15)[1])
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_index_takes_either_kind_of_shard(tmp_path):
    mp.spawn(_mixed_shards, args=(2, tmp_path / "rendezvous"), nprocs=2, join=True)


@pytest.mark.gpu
def test_cuda_search_never_allocates_the_score_matrix():
    index = TorchDocumentIndex(768, "float16", "cuda")
    index.upsert(np.arange(200_000), torch.randn(200_000, 768, device="cuda"))
    queries = torch.randn(64, 768, device="cuda")
    index.search_tensors(queries, 100)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    index.search_tensors(queries, 100)
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 64 * 200_000 * 2 / 4  # far below the (64 × N) fp16 score matrix
