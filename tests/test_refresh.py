"""Refresh remedies: in-place transform of older rows, the drift correctors, write-back rerank.

Each one re-embeds or changes exactly what it promises. The "encoder" here is a known linear
drift of a base embedding, so what every row must hold afterwards is known exactly.
"""

import numpy as np
import pytest
import torch

from atlas_fast.index import DocumentIndex, TorchDocumentIndex
from atlas_fast.index.corrector import fit_map
from atlas_fast.index.refresh import RefreshPolicy
from atlas_fast.testing.tiny import tiny_train_config
from atlas_fast.train.config import ConfigError

N, DIM = 40, 4


def _rotation(seed: int, dim: int = DIM) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q.astype(np.float32)


def _base() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)


def _index(kind: str, dtype: str = "float32"):
    return DocumentIndex(DIM, dtype) if kind == "host" else TorchDocumentIndex(DIM, dtype, "cpu")


@pytest.mark.parametrize("kind", ["host", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transform_maps_exactly_the_rows_of_older_versions(kind, dtype):
    index, base, matrix = _index(kind, dtype), _base(), _rotation(1) * 1.5
    index.upsert(np.arange(20), base[:20], step=0)
    index.upsert(np.arange(20, N), base[20:], step=3)
    index.record_retrieved(np.arange(5))
    stored = index.get(np.arange(N))
    assert index.transform(matrix, older_than=3) == 20
    after = index.get(np.arange(N))
    rounding = 1e-6 if dtype == "float32" else 2**-7
    np.testing.assert_allclose(after[:20], stored[:20] @ matrix, rtol=rounding, atol=rounding * 4)
    np.testing.assert_array_equal(after[20:], stored[20:])  # rows of the current version stay as they are
    np.testing.assert_array_equal(index.step_of(np.arange(N)), [0] * 20 + [3] * 20)  # steps stay
    assert set(index.stale_ids(5, "hot").tolist()) == set(range(5))  # so do retrieval counts
    # normalize: the mapped rows end on the unit sphere, in the direction of the mapped vector.
    assert index.transform(matrix, older_than=3, normalize=True) == 20
    mapped = after[:20] @ matrix
    unit = index.get(np.arange(20))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=rounding * 2)
    np.testing.assert_allclose(unit, mapped / np.linalg.norm(mapped, axis=1, keepdims=True), atol=rounding * 2)
    np.testing.assert_array_equal(index.get(np.arange(20, N)), stored[20:])


@pytest.mark.parametrize("kind", ["host", "torch"])
def test_normalising_transform_leaves_a_zero_row_zero(kind):
    index = _index(kind)
    index.upsert(np.arange(2), np.array([[0, 0, 0, 0], [3, 0, 4, 0]], np.float32))
    assert index.transform(np.eye(DIM), older_than=1, normalize=True) == 2
    np.testing.assert_allclose(index.get(np.arange(2)), [[0, 0, 0, 0], [0.6, 0, 0.8, 0]], atol=1e-7)


@pytest.mark.parametrize("kind", ["host", "torch"])
@pytest.mark.parametrize(
    ("matrix", "older_than", "message"),
    [
        (np.eye(3), 1, r"matrix must have shape \(4, 4\); got \(3, 3\)"),
        (np.eye(4)[:2], 1, r"matrix must have shape \(4, 4\)"),
        (np.eye(4, 5), 1, r"matrix must have shape \(4, 4\); got \(4, 5\)"),
        (np.eye(4) * 1e300, 1, "matrix holds values beyond float32's range"),
        (np.full((4, 4), np.nan), 1, "matrix contains NaN"),
        (np.eye(4), -1, "older_than must be an integer"),
        (np.eye(4), 1.5, "older_than must be an integer"),
    ],
)
def test_transform_names_bad_arguments(kind, matrix, older_than, message):
    index = _index(kind)
    index.upsert(np.arange(3), _base()[:3])
    with pytest.raises(ValueError, match=message):
        index.transform(matrix, older_than)
    np.testing.assert_array_equal(index.get(np.arange(3)), _base()[:3])


def test_procrustes_recovers_a_rotation_and_linear_a_general_map():
    rng = np.random.default_rng(2)
    old = rng.standard_normal((64, 8))
    rotation = _rotation(3, 8)
    np.testing.assert_allclose(fit_map(old, old @ rotation, "procrustes", ridge=1e-9), rotation, atol=1e-5)
    general = rng.standard_normal((8, 8))
    np.testing.assert_allclose(fit_map(old, old @ general, "linear", ridge=1e-8), general, atol=1e-4)
    # With fewer pairs than dimensions, directions the pairs do not span stay where they were (identity).
    few = rng.standard_normal((3, 8))
    unseen = np.linalg.svd(few)[2][3:]  # (5, 8) rows orthogonal to every pair
    mapped = unseen @ fit_map(few, few @ general, "linear")
    np.testing.assert_allclose(mapped, unseen, atol=1e-5)
    # Under a small drift (an encoder's step), Procrustes too leaves them near where they were instead of
    # rotating them arbitrarily, as plain Procrustes (no identity term) does when pairs are fewer than d.
    small, _ = np.linalg.qr(np.eye(8) + 0.05 * rng.standard_normal((8, 8)))
    small *= np.sign(np.diag(small))  # the rotation near the identity, not a reflection of it
    rotated = unseen @ fit_map(few, few @ small, "procrustes")
    assert np.sum(rotated * unseen, axis=1).min() > 0.95
    with pytest.raises(ValueError, match="kind must be one of"):
        fit_map(old, old, "cubic")
    with pytest.raises(ValueError, match="n ≥ 1"):
        fit_map(old[:0], old[:0], "linear")


@pytest.mark.parametrize("corrector", ["procrustes", "linear"])
def test_a_corrector_carries_every_older_row_to_the_new_encoder(corrector):
    base, drift = _base(), _rotation(4)
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), base, step=0)

    def embed(ids):  # the encoder after step 1: the base embedding under a rotation
        return base[ids] @ drift

    policy = RefreshPolicy("incremental", index, embed, lambda: np.arange(N), budget=8, corrector=corrector, ridge=0.1)
    assert policy.after_step(1) == 8
    assert policy.documents_embedded == 8 and policy.rows_corrected == N - 8
    # The 8 re-embedded rows are fresh; the 32 others were mapped by the fitted map most of the way to what
    # the new encoder would make of them (both maps are pulled towards the identity), without re-embedding.
    stored, truth = index.get(np.arange(N)), base @ drift
    np.testing.assert_allclose(stored[:8], truth[:8], atol=1e-6)
    assert np.abs(stored[8:] - truth[8:]).mean() < 0.3 * np.abs(base[8:] - truth[8:]).mean()
    np.testing.assert_array_equal(np.sort(np.flatnonzero(index.step_of(np.arange(N)) == 1)), np.sort(np.arange(8)))


def test_an_accumulated_corrector_fits_every_pair_so_far_and_a_checkpoint_keeps_them():
    # Three pairs a step in 4 dimensions: one step's pairs cannot determine the drift; two steps' can.
    base, drift = _base(), _rotation(7) * 0.8 + 0.1 * np.eye(DIM, dtype=np.float32)
    served = {}
    for fit in ("step", "accumulated"):
        index = DocumentIndex(DIM)
        index.upsert(np.arange(N), base, step=0)
        policy = RefreshPolicy(
            "incremental",
            index,
            lambda ids: base[ids] @ drift,
            lambda: np.arange(N),
            budget=3,
            corrector="linear",
            ridge=1e-9,
            corrector_fit=fit,
        )
        assert policy.after_step(1) == 3 and policy.after_step(2) == 3
        served[fit] = index.get(np.arange(N))
        if fit == "accumulated":
            first = np.sort(np.flatnonzero(index.step_of(np.arange(N)) > 0))
            np.testing.assert_allclose(policy.gram, base[first].T.astype(np.float64) @ base[first], rtol=1e-5)
            restored = RefreshPolicy(
                "incremental", index, policy.embed, policy.owned_ids, corrector="linear", corrector_fit=fit
            )
            restored.load_state_dict(policy.state_dict())
            for name in ("applied", "gram", "cross"):
                np.testing.assert_array_equal(getattr(restored, name), getattr(policy, name))
    # Pooled, the six pairs determine the map: every row, re-embedded or not, is what the encoder makes of it.
    np.testing.assert_allclose(served["accumulated"], base @ drift, atol=1e-4)
    assert np.abs(served["step"] - base @ drift).max() > 1e-2  # three pairs at a time leave a direction unfitted


def test_the_scale_corrector_puts_a_shrunk_encoder_and_the_older_rows_on_one_scale():
    # The drift the diagnosis measured: every embedding shrinks (here by 0.45) and turns a little.
    base, shrink = _base(), 0.45
    rng = np.random.default_rng(5)
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), base, step=0)
    noise = 0.01 * rng.standard_normal(base.shape).astype(np.float32)
    policy = RefreshPolicy(
        "incremental",
        index,
        lambda ids: shrink * base[ids] + noise[ids],
        lambda: np.arange(N),
        budget=5,
        corrector="scale",
    )
    assert policy.after_step(1) == 5 and policy.rows_corrected == N - 5
    stored = index.get(np.arange(N))
    # The older rows were rescaled, not turned: each is its old vector times one factor, the fitted shrink.
    factor = np.sum(stored[5:] * base[5:], axis=1) / np.sum(base[5:] ** 2, axis=1)
    np.testing.assert_allclose(factor, factor[0], rtol=1e-5)
    assert factor[0] == pytest.approx(shrink, abs=0.01)
    np.testing.assert_allclose(stored[:5], shrink * base[:5] + noise[:5], rtol=1e-6)
    assert np.isclose(fit_map(base, 2 * base, "scale"), 2 * np.eye(DIM)).all()


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_a_normalising_policy_writes_unit_rows_and_corrects_onto_the_unit_sphere():
    base, drift = _base(), 0.4 * _rotation(6)  # the encoder shrinks and turns
    index = DocumentIndex(DIM)
    policy = RefreshPolicy(
        "incremental", index, lambda ids: base[ids] @ drift, lambda: np.arange(N), budget=8, corrector="linear"
    )
    policy.normalize = True
    policy.embed = lambda ids: base[ids]  # the build: the encoder before the step
    policy.build()
    np.testing.assert_allclose(index.get(np.arange(N)), _unit(base), rtol=1e-6)
    policy.embed = lambda ids: base[ids] @ drift
    assert policy.after_step(1) == 8 and policy.rows_corrected == N - 8
    stored = index.get(np.arange(N))
    np.testing.assert_allclose(stored[:8], _unit(base[:8] @ drift), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    # The corrected rows turned towards the new encoder's directions.
    truth = _unit(base[8:] @ drift)
    assert np.sum(stored[8:] * truth, axis=1).mean() > np.sum(_unit(base[8:]) * truth, axis=1).mean()


def test_a_normalising_policy_normalises_a_dot_product_index_it_restores_once():
    base = _base()
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), base, step=3)
    policy = RefreshPolicy("incremental", index, lambda ids: base[ids], lambda: np.arange(N), normalize=True)
    policy.load_state_dict({"documents_embedded": 5})  # a checkpoint of a dot-product run (or an older one)
    np.testing.assert_allclose(index.get(np.arange(N)), _unit(base), rtol=1e-6)
    np.testing.assert_array_equal(index.step_of(np.arange(N)), 3)  # versions stay
    assert policy.state_dict() == {"documents_embedded": 5, "index_normalized": True}
    index.upsert([0], base[:1] * 7, step=4)  # not unit: a state that says normalised is taken at its word
    policy.load_state_dict(policy.state_dict())
    np.testing.assert_array_equal(index.get([0]), base[:1] * 7)


def test_a_normalising_rerank_scores_by_cosine():
    base = _base()
    base[3] *= 50  # a long vector wins every dot product, not every cosine
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), base)
    policy = RefreshPolicy("rerank", index, lambda ids: base[ids], lambda: np.arange(N), candidates=N, normalize=True)
    queries = torch.from_numpy(base[[5, 9]])
    ids = policy.retrieve(queries, 1)
    np.testing.assert_array_equal(ids[:, 0], [5, 9])


def test_only_training_retrievals_make_a_document_hot():
    base = _unit(_base())  # unit rows: each query's top-1 is its own document
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), base)
    policy = RefreshPolicy("incremental", index, lambda ids: base[ids], lambda: np.arange(N), order="hot")
    queries = torch.from_numpy(base[30:33])
    cold = index.stale_ids(3, "hot").tolist()
    np.testing.assert_array_equal(policy.retrieve(queries, 1)[:, 0], [30, 31, 32])  # an evaluation's: no record
    assert index.stale_ids(3, "hot").tolist() == cold
    policy.retrieve(queries, 1, step=1)
    assert sorted(index.stale_ids(3, "hot").tolist()) == [30, 31, 32]


def test_a_frozen_encoder_step_corrects_nothing():
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), _base())
    policy = RefreshPolicy("incremental", index, lambda ids: _base()[ids] * 2, lambda: np.arange(N), corrector="linear")
    assert policy.after_step(1, encoder_changed=False) == 0
    assert policy.rows_corrected == 0
    np.testing.assert_array_equal(index.get(np.arange(N)), _base())


def test_write_back_rerank_upserts_the_candidates_it_re_embedded_while_training():
    base, drift = _base(), _rotation(5)
    index = DocumentIndex(DIM)
    index.upsert(np.arange(N), base, step=0)

    def embed(ids):
        return base[ids] @ drift

    policy = RefreshPolicy("rerank", index, embed, lambda: np.arange(N), candidates=6, write_back=True)
    queries = torch.from_numpy(base[:3] @ drift)
    candidates = index.search(queries.numpy(), 6)[1]
    ids = policy.retrieve(queries, 2, step=7)
    assert ids.shape == (3, 2) and policy.documents_embedded == 18
    written = np.unique(candidates)
    np.testing.assert_allclose(index.get(written), base[written] @ drift, atol=1e-6)
    np.testing.assert_array_equal(index.step_of(written), 7)
    others = np.setdiff1d(np.arange(N), written)
    np.testing.assert_array_equal(index.get(others), base[others])
    # An evaluation retrieval (no step) re-scores but writes nothing.
    before = index.get(np.arange(N))
    policy.retrieve(torch.from_numpy(base[10:12]), 2)
    np.testing.assert_array_equal(index.get(np.arange(N)), before)


def test_policy_options_are_checked():
    index = DocumentIndex(DIM)
    with pytest.raises(ValueError, match="corrector must be one of"):
        RefreshPolicy("incremental", index, lambda ids: ids, lambda: np.arange(0), corrector="magic")
    with pytest.raises(ConfigError, match="rerank_write_back needs refresh"):
        tiny_train_config(refresh="incremental", rerank_write_back=True)
    with pytest.raises(ConfigError, match="refresh_corrector"):
        tiny_train_config(refresh_corrector="magic")


def test_the_experiment_runs_every_policy_and_seed_from_one_warm_up(tmp_path):
    import json

    from atlas_fast.experiments.refresh import format_table, plot_results, refresh_experiment
    from atlas_fast.testing.tiny import tiny_config

    config = tiny_config(tmp_path, freeze_retriever_steps=1, rerank_candidates=6)
    policies = ("none", "incremental+procrustes", "rerank+write-back")
    results = refresh_experiment(config, joint_steps=2, policies=policies, seeds=(0, 1), other_task=None)
    assert list(results["policies"]) == list(policies)
    for name, row in results["policies"].items():
        assert len(row["recall@1_seeds"]) == 2 and row["recall@1"] == pytest.approx(np.mean(row["recall@1_seeds"]))
        assert row["kind"] == name.split("+")[0]
    assert results["policies"]["none"]["documents_reembedded"] == 0
    assert results["policies"]["incremental+procrustes"]["documents_reembedded"] == 2 * config.refresh_budget
    # Training cost only: 2 steps x 4 questions x 6 candidates, not the evaluation's reranking too.
    assert results["policies"]["rerank+write-back"]["documents_reembedded"] == 2 * 4 * 6
    stored = json.loads((tmp_path / "run" / "refresh_experiment.json").read_text())
    assert stored["policies"].keys() == results["policies"].keys()
    assert "rerank+write-back" in format_table(results)
    plot_results(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # More policies join the same warm-up later: the same start, the same runs.
    warm = str(tmp_path / "run" / "checkpoint-1")
    again = refresh_experiment(config, 2, ("none",), seeds=(0, 1), other_task=None, warm_checkpoint=warm)
    assert again["after_warmup"] == results["after_warmup"]
    assert again["policies"]["none"]["recall@1_seeds"] == results["policies"]["none"]["recall@1_seeds"]
    assert list(again["policies"]) == list(policies)  # the earlier policies are kept beside the re-run one


def test_the_diagnosis_probes_every_age_group_of_a_mixed_index(tmp_path):
    from atlas_fast.experiments.refresh import policy_config
    from atlas_fast.experiments.refresh_diagnosis import diagnose_refresh, format_diagnosis
    from atlas_fast.testing.tiny import tiny_config

    config = policy_config(tiny_config(tmp_path, freeze_retriever_steps=1), "incremental+budget=3")
    result = diagnose_refresh(config, joint_steps=4, probe_every=2)
    assert [probe["step"] for probe in result["probes"]] == [0, 2, 4]
    first, last = result["probes"][0], result["probes"][-1]
    assert list(first["groups"]) == ["warm-up"] and first["overwritten"] == 0
    assert first["same_documents"]["cosine"] == pytest.approx(1.0, abs=1e-5)  # nothing has trained yet
    # 4 steps x 3 documents re-embedded, in the groups of their age; the shares add up.
    assert sum(row["rows"] for label, row in last["groups"].items() if label != "warm-up") == 12
    assert sum(row["rows_share"] for row in last["groups"].values()) == pytest.approx(1.0)
    assert sum(row["top10_share"] for row in last["groups"].values()) == pytest.approx(1.0)
    assert last["overwritten"] == 6  # since the previous probe: steps 3 and 4
    assert "top-10 share" in format_diagnosis(result)


def test_the_ceiling_serves_every_index_between_stale_and_fresh(tmp_path):
    from atlas_fast.experiments.refresh_ceiling import RIDGES, ceiling_of_correction, format_ceiling
    from atlas_fast.testing.tiny import tiny_config

    config = tiny_config(tmp_path, freeze_retriever_steps=1, index_normalize=True)
    with pytest.raises(ConfigError, match="fractions must be between 0 and 1"):
        ceiling_of_correction(config, joint_steps=2, fractions=(0.5, 1.0))
    result = ceiling_of_correction(config, joint_steps=2, fractions=(0.25, 0.5))
    rows = result["rows"]
    per_order = 2 + len(RIDGES) + 1  # fresh alone, each ridge, the MLP, query-side
    assert len(rows) == 2 + 2 * 2 * per_order and {"none", "full", "fresh 0.5 hot: query-side instead"} <= set(rows)
    for name, row in rows.items():
        assert 0 <= row["recall@1"] <= row[f"recall@{config.eval_k[-1]}"] <= 1, name
        assert ("cosine" in row) == ("+" in name), name
    # The corrected rows are closer to the fresh ones than the stale rows were, or as close (tiny drift).
    assert rows["fresh 0.5 random +linear ridge 0.01"]["cosine"] >= result["cosine_stale_fresh"] - 1e-3
    assert "fresh 0.25 random: query-side instead" in format_ceiling(result)
    assert (tmp_path / "run" / "refresh_ceiling.json").exists()
