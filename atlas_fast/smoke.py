"""`atlas-fast smoke`: the info report, then a quick end-to-end check of every capability against its oracle.

Each check runs one capability on small inputs and compares it with a direct computation
(numpy, Atlas's own expression, materialised attention); `smoke()` reports every check and
counts the failures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atlas_fast import _dispatch, _ext, info, losses
from atlas_fast.attention import fid_cross_attention
from atlas_fast.index import DocumentIndex, merge_topk

__all__ = ["SMOKE_CHECKS", "smoke"]


def _check_merge_topk() -> str:
    rng = np.random.default_rng(0)
    shards = [rng.standard_normal((4, 10)).astype(np.float32) for _ in range(3)]
    ids = [np.arange(10 * s, 10 * (s + 1)).repeat(4).reshape(10, 4).T.copy() for s in range(3)]
    scores, merged_ids = merge_topk(shards, ids, k=5)
    everything = np.concatenate(shards, axis=1)
    expected = -np.sort(-everything, axis=1)[:, :5]
    if not np.array_equal(scores, expected):
        raise AssertionError("merge_topk disagrees with a full sort")
    return f"merge_topk of 3 shards -> top-5 ids {merged_ids[0].tolist()}"


def _check_document_index() -> str:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 64)).astype(np.float32)
    index = DocumentIndex(64, "bfloat16")
    index.upsert(np.arange(5000), vectors)
    index.upsert(np.arange(100), vectors[:100] * 0.5, step=1)  # an in-place refresh
    queries = rng.standard_normal((8, 64)).astype(np.float32)
    _, found = index.search(queries, 10)
    stored = index.get(np.arange(5000))
    path = _ext.simd_paths()["bfloat16"]
    searched = queries  # what the path multiplies: it rounds the queries to bf16 too (once per search)
    if path == "avx512bf16":
        searched = torch.from_numpy(queries).bfloat16().float().numpy()
    expected = np.argsort(-(searched @ stored.T), axis=1, kind="stable")[:, :10]
    if not (found == expected).mean() > 0.99:
        raise AssertionError("DocumentIndex.search disagrees with a numpy scan")
    with tempfile.TemporaryDirectory() as directory:
        index.save(Path(directory) / "index.afi")
        reloaded = DocumentIndex.load(Path(directory) / "index.afi")
    if not np.array_equal(reloaded.search(queries, 10)[1], found):
        raise AssertionError("DocumentIndex save/load changed the results")
    stale = index.stale_ids(3)
    return f"5000 bf16 documents ({path} path), search = numpy scan, save/load round trip, next stale: {stale}"


def _check_losses() -> str:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 40, generator=generator, requires_grad=True)
    gold = torch.randn(8, 40, generator=generator)
    loss = losses.kldivloss(scores, gold)
    # Atlas's expression: KLDivLoss() with reduction "mean" over softmaxes at τ = 0.01.
    atlas = F.kl_div(F.log_softmax(scores / 0.01, -1), F.softmax(gold / 0.01, -1), reduction="sum") / scores.numel()
    torch.testing.assert_close(loss, atlas, rtol=1e-5, atol=1e-6)
    token_logprobs = torch.randn(8, 40, 5, generator=generator).log_softmax(-1)
    emdr = losses.emdr_loss(scores, token_logprobs, torch.randint(0, 5, (8, 5), generator=generator))
    loss.backward()
    backend = _dispatch.choose_backend("kldivloss", scores.device)
    return f"kldivloss {loss.item():.4f} = Atlas's expression, emdr_loss {emdr.item():.4f} ({backend} backend)"


def _check_attention() -> str:
    generator = torch.Generator().manual_seed(0)
    B, NH, T, K, L, Dh = 2, 4, 6, 10, 32, 16
    q = torch.randn(B, NH, T, Dh, generator=generator)
    k, v = torch.randn(2, B, NH, K * L, Dh, generator=generator)
    mask = torch.rand(B, K * L, generator=generator) > 0.2
    out, mass = fid_cross_attention(q, k, v, mask, K, passage_mass="prob")
    logits = (q @ k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(out, probs @ v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mass, probs.view(B, NH, T, K, L).sum(-1), rtol=1e-5, atol=1e-6)
    backend = _dispatch.choose_backend("fid_cross_attention", q.device)
    return f"{K} passages: output and per-passage mass = materialised attention ({backend} backend)"


def _check_trainer() -> str:
    from atlas_fast.testing.tiny import tiny_config
    from atlas_fast.train import Trainer

    with tempfile.TemporaryDirectory() as directory:
        trainer = Trainer(tiny_config(Path(directory), steps=3))
        trainer.build_index()
        records = [trainer.train_step() for _ in range(3)]
    if not all(np.isfinite([r["reader_loss"], r["retriever_loss"]]).all() for r in records):
        raise AssertionError("non-finite training loss")
    return (
        f"3 PDist steps of tiny models on a synthetic corpus: reader loss {records[0]['reader_loss']:.2f} -> "
        f"{records[-1]['reader_loss']:.2f}, {sum(r['documents_reembedded'] for r in records)} documents re-embedded"
    )


SMOKE_CHECKS: dict[str, Callable[[], str]] = {
    "index.merge_topk (C++)": _check_merge_topk,
    "index.DocumentIndex (C++)": _check_document_index,
    "losses.kldivloss / emdr_loss": _check_losses,
    "attention.fid_cross_attention": _check_attention,
    "train.Trainer (tiny)": _check_trainer,
}


def smoke() -> int:
    """Print the info report, run every smoke check; returns the number of failures."""
    print(info.report())
    print()
    failures = 0
    for name, check in SMOKE_CHECKS.items():
        try:
            print(f"ok    {name}: {check()}")
        except Exception as error:  # report every failing check, not just the first
            failures += 1
            print(f"FAIL  {name}: {type(error).__name__}: {error}")
    print(f"\nsmoke: {len(SMOKE_CHECKS) - failures} passed, {failures} failed")
    return failures
