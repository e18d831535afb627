"""Training configuration: one dataclass, loadable from TOML, overridable with ``--set key=value``.

Field names and defaults follow Atlas's options where Atlas has one (n_context = K,
temperature_score/gold = 0.01, freeze_retriever_steps, refresh_index every N steps,
gold_score_mode). The defaults are the README's `make run`; the tests' configuration is
atlas_fast.testing.tiny.tiny_train_config.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from atlas_fast.index import corrector, refresh

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["GOLD_SCORE_MODES", "ConfigError", "TrainConfig"]

GOLD_SCORE_MODES = ("pdist", "adist", "loop", "emdr")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("linear", "cosine", "constant")


# Every numeric key's allowed values: (lower bound, whether the bound itself is excluded); no upper bounds,
# and never NaN or infinity. 0 means "off" or "all" where the field's comment says so.
NUMERIC_RANGES: dict[str, tuple[float, bool]] = {
    **dict.fromkeys(("max_passages", "max_train_examples", "max_eval_examples", "reader_decoder_layers"), (0, False)),
    **dict.fromkeys(
        ("query_max_length", "passage_max_length", "reader_passage_max_length", "target_max_length"), (1, False)
    ),
    **dict.fromkeys(("n_context", "refresh_every", "rerank_candidates", "steps", "batch_size"), (1, False)),
    **dict.fromkeys(("accumulation_steps", "eval_k"), (1, False)),
    **dict.fromkeys(("temperature_score", "temperature_gold", "reader_lr"), (0, True)),
    **dict.fromkeys(("retriever_lr", "weight_decay", "clip_norm", "time_budget_s", "corrector_ridge"), (0, False)),
    **dict.fromkeys(("refresh_budget", "warmup_steps", "freeze_retriever_steps", "warmup_cache_examples"), (0, False)),
    **dict.fromkeys(("seed", "eval_every", "eval_generate_examples", "checkpoint_every"), (0, False)),
    **dict.fromkeys(("dev_loss_every", "dev_loss_examples", "reader_copy_steps"), (0, False)),
    "reader_copy_batch_size": (1, False),
}


class ConfigError(ValueError):
    """Bad input from the user: a configuration value unknown, of the wrong type or out of range, or a command's
    argument or output folder that cannot be used; the message names the key, argument or path."""


@dataclass
class TrainConfig:
    # data: a task name of the bundled data ("wiki-describe", "wiki-qa") or explicit jsonl paths
    task: str = "wiki-describe"
    data_root: str = ""  # "" = $ATLAS_FAST_DATA or ~/.cache/atlas_fast/data
    passages: str = ""
    train_data: str = ""
    eval_data: str = ""
    max_passages: int = 0  # 0 = the whole corpus; otherwise the first n (tests, quick runs)
    max_train_examples: int = 0
    max_eval_examples: int = 0
    # models
    retriever_path: str = ""  # "" = the packaged all-MiniLM-L6-v2
    reader: str = "minilm"  # "minilm" (encoder-decoder warm-started from retriever_path's MiniLM) or "t5"
    reader_path: str = ""  # the local T5 checkpoint for reader="t5"
    untied_retriever: bool = False
    query_side_only: bool = False
    reader_train_encoder: bool = False  # False: the reader's encoder stays frozen (CPU default)
    reader_decoder_layers: int = 2  # minilm reader: keep the first n decoder layers (0 = all 6); 2 learns faster
    reader_share_embeddings: bool = False  # minilm reader: decoder input and output embeddings = the encoder's
    query_max_length: int = 32
    passage_max_length: int = 64  # retriever
    reader_passage_max_length: int = 48
    target_max_length: int = 16
    # retrieval and retriever loss
    n_context: int = 5  # K passages per question
    gold_score_mode: str = "pdist"
    temperature_score: float = 0.01
    temperature_gold: float = 0.01
    refresh: str = "full"  # with index_normalize, the best served recall (docs/experiments/refresh.md)
    # "full": re-embed everything every N steps (Atlas's refresh_index). 50: the default run's 50 joint steps end on
    # one full refresh (a corpus pass is 60 s of its 10 minutes on 2 cores; every 25 measured no better in 25 steps).
    refresh_every: int = 50
    refresh_budget: int = 64  # "incremental": documents re-embedded per step
    refresh_order: str = "oldest"  # "oldest" | "hot"
    rerank_candidates: int = 20  # "rerank": over-retrieve this many, re-score with the current encoder
    rerank_write_back: bool = False  # "rerank": upsert the re-scored candidates' fresh embeddings while training
    refresh_corrector: str = "none"  # "none" | "scale" | "procrustes" | "linear": map older rows after a refresh
    corrector_ridge: float = 1.0  # the corrector's pull towards the identity, relative to the pairs' mean square
    corrector_fit: str = "step"  # "step": fitted on this step's re-embedded pairs; "accumulated": on all so far
    # Unit-norm document rows: retrieval by cosine (training scores stay dot products). The retriever's norms shrink
    # as it trains, which a dot-product index turns against its newest rows (docs/experiments/refresh.md).
    index_normalize: bool = True
    index_dtype: str = "float32"
    index_device: str = "host"  # "host": the C++ DocumentIndex; a torch device ("cuda", "auto"): TorchDocumentIndex
    device: str = "auto"  # models: "auto" = this rank's GPU when there is one, else "cpu"
    # optimisation
    steps: int = 650
    batch_size: int = 16
    accumulation_steps: int = 1
    reader_lr: float = 2e-3
    retriever_lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_steps: int = 30
    schedule: str = "linear"
    clip_norm: float = 1.0
    freeze_retriever_steps: int = 600  # the reader warm-up: it must be a useful teacher first
    warmup_cache_examples: int = 3000  # > 0: the warm-up trains the reader over cached encoder states of so many
    # The cached warm-up's first steps: write a single passage's title from that passage (learns to copy;
    # docs/experiments/reader-recipe.md).
    reader_copy_steps: int = 200
    reader_copy_batch_size: int = 64  # passages per title-copy step (one passage each: cheaper than a question)
    warmup_answerable_only: bool = True  # the cached warm-up's question steps: only questions whose K passages hit
    precision: str = "auto"  # bf16 autocast where the device has bf16 arithmetic (setup.resolve_precision), else fp32
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the joint model: one graph each way (docs/experiments/compile.md)
    # More than one rank: "ddp" replicates the models on every rank; "fsdp" shards parameters, gradients and
    # optimizer state over the ranks (FSDP2, train/sharding.py) and checkpoints through torch.distributed.checkpoint.
    parallel: str = "ddp"
    seed: int = 0
    # evaluation and output
    eval_every: int = 0  # 0 = only before and after training
    eval_k: tuple[int, ...] = (1, 5, 10)
    eval_generate_examples: int = 200  # examples whose answers are generated for EM/F1
    dev_loss_every: int = 100  # > 0: log the reader's loss on held-out dev questions every so many steps
    dev_loss_examples: int = 128  # the first so many eval examples, over their top-K passages
    output_dir: str = "runs/default"
    checkpoint_every: int = 250
    # > 0: stop training (then evaluate and save) after this many seconds. Off by default: a run that stops where
    # the clock runs out gives results that depend on the machine (the default run fits 10 minutes without it).
    time_budget_s: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        choices = {
            "gold_score_mode": GOLD_SCORE_MODES,
            "refresh": refresh.POLICIES,
            "precision": PRECISIONS,
            "schedule": SCHEDULES,
            "reader": ("minilm", "t5"),
            "refresh_order": ("oldest", "hot"),
            "refresh_corrector": corrector.CORRECTORS,
            "corrector_fit": corrector.CORRECTOR_FITS,
            "index_dtype": ("float32", "float16", "bfloat16", "int8"),
            "parallel": ("ddp", "fsdp"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        if not self.eval_k:
            raise ConfigError("eval_k must be a non-empty list of positive integers; got []")
        for key, (low, open_low) in NUMERIC_RANGES.items():
            values = getattr(self, key)
            for value in values if isinstance(values, tuple) else (values,):
                if not math.isfinite(value) or value < low or (open_low and value == low):
                    interval = f"({low}, ∞)" if open_low else f"[{low}, ∞)"
                    raise ConfigError(f"{key} must be in {interval}; got {value!r}")
        for key, allowed in (("device", ("auto",)), ("index_device", ("auto", "host"))):
            value = getattr(self, key)
            if value not in allowed:
                try:
                    torch.device(value)
                except (RuntimeError, TypeError):
                    raise ConfigError(
                        f"{key} must be {' or '.join(allowed)} or a torch device; got {value!r}"
                    ) from None
        if (self.query_side_only or self.refresh == "query-side") and not self.untied_retriever:
            setting = "query_side_only" if self.query_side_only else 'refresh = "query-side"'
            raise ConfigError(f"{setting} needs untied_retriever = true (separate passage encoder weights)")
        if self.index_dtype == "int8" and self.index_device != "host":
            raise ConfigError(f'index_dtype = "int8" needs index_device = "host"; got {self.index_device!r}')
        if self.rerank_write_back and self.refresh != "rerank":
            raise ConfigError(f'rerank_write_back needs refresh = "rerank"; got refresh = "{self.refresh}"')
        if self.refresh_corrector != "none" and self.refresh != "incremental":
            raise ConfigError(
                f'refresh_corrector = "{self.refresh_corrector}" needs refresh = "incremental" (it maps the rows '
                f'an incremental refresh left behind); got refresh = "{self.refresh}"'
            )
        if self.refresh_corrector in ("procrustes", "linear") and self.corrector_ridge == 0:
            raise ConfigError(
                f'corrector_ridge = 0 leaves the "{self.refresh_corrector}" fit underdetermined whenever a step '
                "re-embeds fewer documents than the embedding has dimensions (the map is then arbitrary where the "
                "pairs say nothing); use a ridge > 0 (default 1.0)"
            )
        if self.refresh == "rerank" and self.rerank_candidates < self.n_context:
            raise ConfigError(f"rerank_candidates ({self.rerank_candidates}) must be ≥ n_context ({self.n_context})")
        if self.reader == "t5" and not self.reader_path:
            raise ConfigError("reader = 't5' needs reader_path, a local T5 checkpoint directory")

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: dict) -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)} (known: {', '.join(known)})")
        converted = {key: _convert(key, value, known[key].type) for key, value in values.items()}
        return cls(**converted)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
        """The defaults, then the TOML file's keys, then ``key=value`` overrides (values parsed as TOML)."""
        values: dict = {}
        if path is not None:
            path = Path(path)
            if path.is_dir():
                raise ConfigError(f"config file {path} is a directory; give a TOML file")
            try:
                data = path.read_bytes()
                values.update(tomllib.loads(data.decode("utf-8")))
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist") from None
            except UnicodeDecodeError as error:
                line = data[: error.start].count(b"\n") + 1
                raise ConfigError(f"config file {path}:{line}: not UTF-8 text") from None
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        for item in overrides or []:
            key, separator, raw = item.partition("=")
            if not separator:
                raise ConfigError(f"--set expects key=value; got {item!r}")
            values[key.strip()] = _parse_value(raw.strip())
        return cls.from_mapping(values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["eval_k"] = list(self.eval_k)
        return values


def _parse_value(raw: str):
    """A TOML value (numbers, booleans, quoted strings, arrays); anything else is a bare string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _convert(key: str, value, annotation: str):
    expected = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation)
    if annotation.startswith("tuple"):
        valid = isinstance(value, (list, tuple)) and value
        if not valid or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"{key} must be a non-empty list of positive integers; got {value!r}")
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{key} must be a {annotation}; got {value!r}")
    return value
