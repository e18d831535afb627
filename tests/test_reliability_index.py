"""Nothing lost, part 2, for the index: storage ranges, transform, rerank padding, provenance, the index CLI.

Each test asserts the message a user sees and that nothing was lost or changed.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_fast import cli
from atlas_fast.index import DocumentIndex, TorchDocumentIndex
from atlas_fast.index.corrector import fit_map
from atlas_fast.index.refresh import RefreshPolicy
from atlas_fast.testing.tiny import tiny_config, tiny_train_config, write_tiny_bert
from atlas_fast.train import ConfigError, train

DIM = 8
DTYPES = ("float32", "float16", "bfloat16")
# Rows of norm about 3 (a MiniLM embedding's): their squares are fine, what maps them may not be.
BASE = np.random.default_rng(0).standard_normal((6, DIM)).astype(np.float32)


def _index(kind: str, dtype: str):
    index = DocumentIndex(DIM, dtype) if kind == "host" else TorchDocumentIndex(DIM, dtype, "cpu")
    index.upsert(np.arange(len(BASE)), BASE)
    return index


@pytest.mark.parametrize("kind", ["host", "torch"])
@pytest.mark.parametrize(("dtype", "too_large"), [("float16", 65520.0), ("bfloat16", 3.3961776e38)])
def test_values_the_storage_dtype_would_make_infinite_are_refused_and_the_index_still_loads(
    tmp_path, kind, dtype, too_large
):
    index = _index(kind, dtype)
    before = index.get(index.ids())
    with pytest.raises(ValueError, match=f"vectors holds values beyond {dtype}'s range"):
        index.upsert([0, 99], np.stack([np.ones(DIM), np.full(DIM, too_large)]).astype(np.float32))
    assert 99 not in index and np.array_equal(index.get(index.ids()), before)  # the whole call refused
    largest = np.nextafter(np.float32(too_large), np.float32(0))  # the largest value that still rounds to finite
    index.upsert([99], np.full((1, DIM), largest, np.float32))
    assert np.isfinite(index.get([99])).all()
    index.save(tmp_path / "index.afi")
    assert len(DocumentIndex.load(tmp_path / "index.afi")) == len(BASE) + 1  # no "NaN or infinite" on load


@pytest.mark.parametrize("kind", ["host", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [False, True])
def test_a_transform_that_overflows_is_refused_and_changes_nothing(kind, dtype, normalize):
    index = _index(kind, dtype)
    before = index.get(index.ids())
    beyond = "float32" if normalize else dtype
    with pytest.raises(ValueError, match=rf"the matrix maps some rows beyond {beyond}'s range.*index is unchanged"):
        index.transform(np.eye(DIM) * 3e38, older_than=1, normalize=normalize)  # rows hold |v| > 1.2
    np.testing.assert_array_equal(index.get(index.ids()), before)
    scores, _ = index.search(BASE[:2], 3)
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e-40, 1e19], ids=["subnormal-rows", "fp32-squares-overflow"])
def test_normalize_gives_unit_rows_and_both_indexes_agree(dtype, scale):
    """A tiny map (rows of subnormals) and a large one (rows whose fp32 squares overflow) both normalise."""
    host, device = _index("host", dtype), _index("torch", dtype)
    for index in (host, device):
        assert index.transform(np.eye(DIM) * scale, older_than=1, normalize=True) == len(BASE)
    tolerance = 1e-2 if dtype == "bfloat16" else 1e-3
    for index in (host, device):
        np.testing.assert_allclose(np.linalg.norm(index.get(index.ids()), axis=1), 1.0, atol=tolerance)
    expected = BASE / np.linalg.norm(BASE, axis=1, keepdims=True)
    np.testing.assert_allclose(host.get(host.ids()), expected, atol=tolerance)
    np.testing.assert_allclose(device.get(device.ids()), host.get(host.ids()), atol=tolerance)


@pytest.mark.parametrize("kind", ["host", "torch"])
def test_transform_arguments_are_named(kind):
    index = _index(kind, "float32")
    with pytest.raises(ValueError, match=r"normalize must be a bool; got 'no'"):
        index.transform(np.eye(DIM), older_than=1, normalize="no")
    with pytest.raises(ValueError, match=r"matrix must have shape \(8, 8\); got \(8, 9\)"):
        index.transform(np.eye(DIM, DIM + 1), older_than=1)
    with pytest.raises(ValueError, match="matrix holds values beyond float32's range"):
        index.transform(np.eye(DIM) * 1e300, older_than=1)
    np.testing.assert_array_equal(index.get(index.ids()), BASE)


def _rerank_policy(embeddings: np.ndarray, candidates: int, write_back: bool = False) -> RefreshPolicy:
    index = DocumentIndex(DIM)
    index.upsert(np.arange(len(embeddings)), embeddings)
    return RefreshPolicy(
        "rerank",
        index,
        lambda ids: embeddings[ids],
        lambda: np.arange(len(embeddings)),
        candidates=candidates,
        write_back=write_back,
    )


@pytest.mark.parametrize("write_back", [False, True])
def test_rerank_candidates_beyond_the_corpus_are_padding_not_the_last_document(write_back):
    embeddings = np.eye(5, DIM, dtype=np.float32)
    query = torch.from_numpy(embeddings[[4, 0]] * 2)  # the best documents: the last one, and the first
    policy = _rerank_policy(embeddings, candidates=8, write_back=write_back)
    ids = policy.retrieve(query, 3, step=1)
    assert ids[:, 0].tolist() == [4, 0] and (ids >= 0).all()
    assert policy.documents_embedded == 2 * 5  # the corpus of each query, not its 8 candidate slots
    assert (policy.retrieve(query, 7, step=1)[:, 5:] == -1).all()  # a corpus smaller than k: padding, last


@pytest.mark.slow
def test_the_trainer_reranks_more_candidates_than_the_corpus_holds(tmp_path):
    config = tiny_config(tmp_path, refresh="rerank", rerank_candidates=500, steps=2, checkpoint_every=0)
    summary = train(config)
    assert summary["steps"] == 2
    # Each question reranks the 120 passages, not 500 slots: 2 steps of 4 questions, 2 evaluations of 8.
    assert summary["documents_reembedded"] == (2 * config.batch_size + 2 * 8) * 120


def test_a_ridge_that_leaves_the_fit_underdetermined_is_refused():
    with pytest.raises(ConfigError, match='corrector_ridge = 0 leaves the "procrustes" fit underdetermined'):
        tiny_train_config(refresh="incremental", refresh_corrector="procrustes", corrector_ridge=0.0)
    rng = np.random.default_rng(1)
    old = rng.standard_normal((4, DIM))
    with pytest.raises(ValueError, match=r"ridge 0 with pairs of rank 4 < d = 8 leaves the linear fit"):
        fit_map(old, old * 2, "linear", ridge=0.0)
    full = rng.standard_normal((16, DIM))
    np.testing.assert_allclose(fit_map(full, full * 2, "linear", ridge=0.0), 2 * np.eye(DIM), atol=1e-5)


def _shuffled(passages: str, path: Path) -> Path:
    lines = Path(passages).read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    return path


def test_index_build_never_replaces_its_input_or_a_file_that_is_not_an_index(tmp_path, capsys):
    config = tiny_config(tmp_path)
    original = Path(config.passages).read_bytes()
    assert cli.main(["index", "build", config.passages, config.passages, "--retriever", config.retriever_path]) == 2
    assert "is the passages file itself" in capsys.readouterr().err
    assert Path(config.passages).read_bytes() == original
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert cli.main(["index", "build", config.passages, str(notes), "--retriever", config.retriever_path]) == 2
    assert "exists and is not an atlas_fast index; not replacing it" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    built = tmp_path / "corpus.afi"
    for _ in range(2):  # an earlier index may be rebuilt in place
        assert cli.main(["index", "build", config.passages, str(built), "--retriever", config.retriever_path]) == 0


def test_index_search_refuses_another_retriever_of_the_same_dimension(tmp_path, capsys):
    config = tiny_config(tmp_path)
    torch.manual_seed(1)
    other = write_tiny_bert(tmp_path / "other-bert")  # the same architecture, other weights
    built = tmp_path / "corpus.afi"
    assert cli.main(["index", "build", config.passages, str(built), "--retriever", config.retriever_path]) == 0
    capsys.readouterr()
    assert cli.main(["index", "search", str(built), config.passages, "Castle 3", "--retriever", str(other)]) == 2
    assert "was embedded by another retriever than" in capsys.readouterr().err
    command = ["index", "search", str(built), config.passages, "Castle 3", "--retriever", config.retriever_path]
    assert cli.main(command) == 0
    info = {}
    assert cli.main(["index", "info", str(built)]) == 0
    for line in capsys.readouterr().out.splitlines():
        key, _, value = line.partition(": ")
        info[key] = value
    assert len(info["passages_fingerprint"]) == 64 and len(info["retriever_fingerprint"]) == 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run: checkpoints at steps 3 and 6."""
    root = tmp_path_factory.mktemp("trained")
    config = tiny_config(root, steps=6, checkpoint_every=3)
    train(config)
    return root, config


@pytest.mark.slow
def test_a_checkpoint_index_records_its_passages_and_is_refused_over_others(trained, tmp_path, capsys):
    root, config = trained
    checkpoint_dir = root / "run" / "checkpoint-6"
    metadata = DocumentIndex.load(checkpoint_dir / "index").metadata
    assert set(metadata) == {"passages_fingerprint", "retriever_fingerprint"}
    shuffled = _shuffled(config.passages, tmp_path / "shuffled.jsonl")
    paths = [f"{key}={json.dumps(getattr(config, key))}" for key in ("train_data", "eval_data", "retriever_path")]
    settings = [arg for item in paths for arg in ("--set", item)]
    for passages_settings in (
        ["--set", f"passages={json.dumps(str(shuffled))}"],
        ["--set", f"passages={json.dumps(config.passages)}", "--set", "max_passages=100"],
    ):
        capsys.readouterr()
        assert cli.main(["evaluate", str(checkpoint_dir), *settings, *passages_settings]) == 2
        assert "was built over other passages than this run's" in capsys.readouterr().err
    command = ["index", "search", str(checkpoint_dir / "index"), str(shuffled), "Castle 3"]
    assert cli.main([*command, "--retriever", config.retriever_path]) == 2
    assert "does not hold the passages" in capsys.readouterr().err
    # The checkpoint's trained retriever built its rows: the tiny BERT it started from is refused.
    command = ["index", "search", str(checkpoint_dir / "index"), config.passages, "Castle 3"]
    assert cli.main([*command, "--retriever", config.retriever_path]) == 2
    assert "was embedded by another retriever" in capsys.readouterr().err
    settings += ["--set", f"passages={json.dumps(config.passages)}"]
    assert cli.main(["evaluate", str(checkpoint_dir), *settings]) == 0
