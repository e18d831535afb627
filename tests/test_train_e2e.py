"""The trainer end to end on tiny models and a synthetic corpus: learning, exact resume, refresh, errors."""

import json

import numpy as np
import pytest
import torch

from atlas_fast.index import TorchDocumentIndex
from atlas_fast.models import Retriever
from atlas_fast.testing.tiny import tiny_config, write_tiny_bert, write_tiny_t5
from atlas_fast.train import ConfigError, Trainer, train
from atlas_fast.train.metrics import passage_hits
from atlas_fast.train.warmup import EncodedExamples

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["pdist", "adist", "loop", "emdr"])
def test_losses_are_finite_and_decrease(tmp_path, mode):
    config = tiny_config(
        tmp_path,
        gold_score_mode=mode,
        steps=12,
        max_train_examples=4,
        batch_size=4,
        reader_lr=1e-2,
        warmup_steps=0,
        schedule="constant",
        checkpoint_every=0,
    )
    trainer = Trainer(config)
    trainer.build_index()
    records = [trainer.train_step() for _ in range(config.steps)]
    reader = [r["reader_loss"] for r in records]
    retriever = [r["retriever_loss"] for r in records]
    assert np.isfinite(reader).all() and np.isfinite(retriever).all()
    assert np.mean(reader[-3:]) < 0.8 * np.mean(reader[:3])  # the same 4 examples every step: it must fit them


def test_a_whole_run_reports_and_writes_its_outputs(tmp_path):
    summary = train(tiny_config(tmp_path, freeze_retriever_steps=2, eval_every=3, dev_loss_every=2))
    output = tmp_path / "run"
    assert summary["steps"] == 6
    assert {"recall@1", "recall@3", "em", "f1", "teacher@1", "em_top1_title", "em_other_passages"} <= set(
        summary["after"]
    )
    assert (output / "metrics.png").stat().st_size > 1000
    lines = (output / "metrics.jsonl").read_text().splitlines()
    assert sum('"split": "eval"' in line for line in lines) == 3  # before, at step 3, after
    assert '"retriever_loss": null' in lines[1]  # step 1 is inside the frozen-retriever warm-up
    dev = [json.loads(line) for line in lines if '"split": "dev"' in line]
    assert [r["step"] for r in dev] == [2, 4, 6] and all(np.isfinite(r["reader_loss"]) for r in dev)
    assert (output / "latest").read_text().strip() == "checkpoint-6"


@pytest.mark.parametrize(
    "overrides",
    [
        {"reader_train_encoder": True, "untied_retriever": True},
        {"index_device": "cpu"},  # the index in a torch tensor (TorchDocumentIndex), as on a GPU
        {"freeze_retriever_steps": 3, "warmup_cache_examples": 8},  # resumes inside the cached warm-up
    ],
)
def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tmp_path, overrides):
    config = tiny_config(tmp_path, checkpoint_every=0, **overrides)
    uninterrupted = Trainer(config)
    uninterrupted.build_index()
    expected = [uninterrupted.train_step() for _ in range(4)]

    first = Trainer(config)
    first.build_index()
    for _ in range(2):
        first.train_step()
    first.save_checkpoint()
    torch.manual_seed(1234)  # a fresh process would start from other RNG states; resume must restore them
    resumed = Trainer(config)
    assert resumed.resume()
    assert resumed.step == 2
    assert isinstance(resumed.index, TorchDocumentIndex) == (overrides.get("index_device") == "cpu")
    again = [resumed.train_step() for _ in range(2)]
    for want, got in zip(expected[2:], again, strict=True):
        assert got["reader_loss"] == pytest.approx(want["reader_loss"], rel=1e-6)
        if want["retriever_loss"] is None:  # a warm-up step: the retriever is frozen
            assert got["retriever_loss"] is None
        else:
            assert got["retriever_loss"] == pytest.approx(want["retriever_loss"], rel=1e-6)
    for name, value in uninterrupted.retriever.state_dict().items():
        torch.testing.assert_close(resumed.retriever.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(resumed.index.get(np.arange(10)), uninterrupted.index.get(np.arange(10)))


def _as_stored(vectors: np.ndarray, normalized: bool) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True) if normalized else vectors


@pytest.mark.parametrize("normalize", [False, True])
def test_incremental_refresh_rewrites_stored_embeddings(tmp_path, normalize):
    config = tiny_config(
        tmp_path, refresh="incremental", refresh_budget=16, retriever_lr=1e-2, index_normalize=normalize
    )
    trainer = Trainer(config)
    trainer.build_index()
    before = trainer.index.get(np.arange(len(trainer.passages)))
    record = trainer.train_step()
    assert record["documents_reembedded"] == 16
    after = trainer.index.get(np.arange(len(trainer.passages)))
    changed = np.flatnonzero(np.abs(after - before).max(axis=1) > 0)
    assert len(changed) == 16
    np.testing.assert_array_equal(trainer.index.step_of(changed), 1)
    # The rewritten rows are what the current passage encoder makes of those documents.
    fresh = _as_stored(trainer.corpus.embed(changed), normalize)
    np.testing.assert_allclose(after[changed], fresh, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy, per_step", [("none", 0), ("full", 120), ("query-side", 0)])
def test_refresh_policies_reembed_what_they_promise(tmp_path, policy, per_step):
    extra = {"untied_retriever": True} if policy == "query-side" else {}
    trainer = Trainer(tiny_config(tmp_path, refresh=policy, refresh_every=1, **extra))
    trainer.build_index()
    assert trainer.train_step()["documents_reembedded"] == per_step
    if policy == "query-side":
        assert all(p.grad is None and not p.requires_grad for p in trainer.retriever.passage_encoder.parameters())


@pytest.mark.parametrize("normalize", [False, True])
def test_rerank_retrieves_by_fresh_scores(tmp_path, normalize):
    config = tiny_config(tmp_path, refresh="rerank", rerank_candidates=10, n_context=3, index_normalize=normalize)
    trainer = Trainer(config)
    trainer.build_index()
    examples = trainer.eval_examples[:2]
    passages = trainer.retrieval.retrieve(examples, 3)
    assert [len(row) for row in passages] == [3, 3]
    assert trainer.refresh.documents_embedded == 20
    with torch.no_grad():
        queries = trainer.retriever.embed_queries(trainer.reader.text_format.format_queries(examples))
        fresh = trainer.retriever.embed_passages([Retriever.passage_text(p) for p in passages[0]])
    scores = (queries[0] @ torch.from_numpy(_as_stored(fresh.numpy(), normalize)).T).tolist()
    assert scores == sorted(scores, reverse=True)


def test_evaluation_counts_gold_passages(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.build_index()
    # Make the retriever an oracle: unit-norm documents, each eval query embedded as its gold passage's vector.
    everything = np.arange(len(trainer.passages))
    vectors = trainer.index.get(everything)
    trainer.index.upsert(everything, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    rows = [int(e.passage_id[1:]) for e in trainer.eval_examples]
    gold = {
        q: torch.from_numpy(v)
        for q, v in zip(
            trainer.reader.text_format.format_queries(trainer.eval_examples), trainer.index.get(rows), strict=True
        )
    }
    trainer.retriever.embed_queries = lambda texts: torch.stack([gold[t] for t in texts])
    metrics = trainer.evaluator(generate=True)
    assert metrics["recall@1"] == 1.0
    assert metrics["em_top1_title"] == 1.0  # the copy-the-title control is exact with the gold passage first
    assert metrics["retriever@1_same_examples"] == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_context": 500}, "n_context = 500 is larger than the corpus"),
        ({"passages": "/nonexistent/passages.jsonl"}, "no such file"),
        ({"refresh": "sometimes"}, "refresh must be one of"),
        ({"query_side_only": True}, "needs untied_retriever"),
    ],
)
def test_bad_configurations_are_named(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        Trainer(tiny_config(tmp_path, **overrides))


def test_warmup_cache_holds_the_examples_encoder_states(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.build_index()
    examples = trainer.train_examples[:4]
    cache = EncodedExamples(trainer.reader, trainer.retrieval.retrieve, examples, 3, trainer.autocast)
    states, mask, labels = cache.batch([0, 1, 2, 3])
    reader = trainer.reader.eval()
    queries = trainer.reader.text_format.format_queries(examples)
    with torch.no_grad():
        passages = trainer.retrieval.retrieve(examples, 3)
        direct_states, direct_mask = reader.encode(*reader.tokenize_passages(queries, passages))
        direct_labels = reader.tokenize_targets([e.answers[0] for e in examples])
        cached_loss = reader.loss(states, mask, labels, 3)
        direct_loss = reader.loss(direct_states, direct_mask, direct_labels, 3)
    torch.testing.assert_close(cached_loss, direct_loss, rtol=1e-2, atol=1e-3)  # states are kept in bfloat16


def test_the_title_copy_task_is_each_cached_passage_alone_with_its_own_title(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.build_index()
    examples = trainer.train_examples[:4]
    cache = EncodedExamples(trainer.reader, trainer.retrieval.retrieve, examples, 3, trainer.autocast)
    retrieved = trainer.retrieval.retrieve(examples, 3)
    pairs = [(0, 0), (1, 2), (3, 1)]
    states, mask, labels = cache.passage_batch(pairs)
    reader = trainer.reader.eval()
    passages = [[retrieved[i][k]] for i, k in pairs]
    queries = [reader.text_format.format_queries(examples)[i] for i, _ in pairs]
    with torch.no_grad():
        direct_states, direct_mask = reader.encode(*reader.tokenize_passages(queries, passages))
        direct_labels = reader.tokenize_targets([row[0].title for row in passages])
        torch.testing.assert_close(labels, direct_labels)
        cached_loss = reader.loss(states, mask, labels, 1)
        direct_loss = reader.loss(direct_states, direct_mask, direct_labels, 1)
    torch.testing.assert_close(cached_loss, direct_loss, rtol=1e-2, atol=1e-3)  # states are kept in bfloat16
    assert cache.answerable == passage_hits(examples, retrieved, {}).any(axis=1).tolist()


@pytest.mark.parametrize("answerable_only", [True, False])
def test_the_cached_warm_up_copies_titles_first_then_trains_on_answerable_questions(tmp_path, answerable_only):
    config = tiny_config(
        tmp_path,
        freeze_retriever_steps=5,
        warmup_cache_examples=12,
        reader_copy_steps=2,
        reader_copy_batch_size=5,
        warmup_answerable_only=answerable_only,
    )
    trainer = Trainer(config)
    trainer.build_index()
    copy = trainer.warmup.batch(0, 0)
    assert copy.n_passages == 1 and copy.states.shape[0] == 5 and copy.labels.shape[0] == 5
    cache = trainer.warmup.cache
    expected = [i for i in range(len(cache)) if cache.answerable[i]] if answerable_only else list(range(len(cache)))
    assert trainer.warmup.question_examples == (expected or list(range(len(cache))))
    records = [trainer.train_step() for _ in range(5)]
    assert all(r["retriever_loss"] is None and np.isfinite(r["reader_loss"]) for r in records)
    question = trainer.warmup.batch(trainer.step, 2)  # step 5 is past the copy steps
    assert question.n_passages == 3 and question.states.shape[1] % 3 == 0


def test_the_dev_reader_loss_is_the_token_mean_over_held_out_questions(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, freeze_retriever_steps=2, dev_loss_examples=5))
    trainer.build_index()
    examples = trainer.eval_examples[:5]
    reader = trainer.reader
    with torch.no_grad(), trainer.autocast():
        queries = reader.text_format.format_queries(examples)
        states, mask = reader.eval().encode(*reader.tokenize_passages(queries, trainer.retrieval.retrieve(examples, 3)))
        labels = reader.labels(examples)
        # Per example, weighted by its target tokens: the mean over every target token of the 5.
        per_example = [reader.loss(states[i : i + 1], mask[i : i + 1], labels[i : i + 1], 3).item() for i in range(5)]
    tokens = (labels != -100).sum(1).numpy()
    expected = float(np.dot(per_example, tokens) / tokens.sum())
    # The cached states are bf16.
    assert trainer.warmup.dev_reader_loss(trainer.step, batch_size=2) == pytest.approx(expected, rel=2e-2)
    cache = trainer.warmup.dev_cache
    trainer.train_step()  # still frozen: the same passages and states, encoded once
    trainer.warmup.dev_reader_loss(trainer.step)
    assert trainer.warmup.dev_cache is cache
    trainer.train_step()
    # The retriever trains from here on: passages may change, so they are re-encoded.
    trainer.warmup.dev_reader_loss(trainer.step)
    assert trainer.warmup.dev_cache is not cache


def test_gradient_checkpointing_and_accumulation_keep_the_losses(tmp_path):
    def first_step(**overrides):
        trainer = Trainer(tiny_config(tmp_path, checkpoint_every=0, **overrides))
        trainer.build_index()
        return trainer.train_step()

    plain = first_step()
    checkpointed = first_step(gradient_checkpointing=True)
    assert checkpointed["reader_loss"] == pytest.approx(plain["reader_loss"], rel=1e-5)
    assert checkpointed["retriever_loss"] == pytest.approx(plain["retriever_loss"], rel=1e-5)
    assert checkpointed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    # Two micro-batches of 2 are the batch of 4: the same examples, losses and (accumulated) gradients.
    # Dropout would draw different masks for the two shapes, so these models have none.
    write_tiny_bert(tmp_path / "bert-no-dropout", dropout=0.0)
    deterministic = {"retriever_path": str(tmp_path / "bert-no-dropout")}
    whole = first_step(batch_size=4, **deterministic)
    accumulated = first_step(accumulation_steps=2, batch_size=2, **deterministic)
    for key in ("reader_loss", "retriever_loss", "grad_norm"):
        assert accumulated[key] == pytest.approx(whole[key], rel=1e-4), key


def test_a_local_t5_checkpoint_trains_as_the_reader(tmp_path):
    write_tiny_t5(tmp_path / "tiny-t5")
    trainer = Trainer(
        tiny_config(tmp_path, reader="t5", reader_path=str(tmp_path / "tiny-t5"), gold_score_mode="adist")
    )
    assert trainer.reader.is_t5 and trainer.reader.text_format.query.endswith("<extra_id_0>")
    trainer.build_index()
    records = [trainer.train_step() for _ in range(2)]
    assert np.isfinite([r["reader_loss"] for r in records] + [r["retriever_loss"] for r in records]).all()
    assert {"em", "teacher@1"} <= set(trainer.evaluator(generate=True))
