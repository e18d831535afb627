"""Building a run's pieces from its configuration: data and its batch order, models, optimiser, schedule, distributed
group."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist

from atlas_fast.data.formats import DataFormatError, Example, Passage, read_examples, read_passages
from atlas_fast.data.prepare import TASKS, ensure_prepared
from atlas_fast.index.refresh import trains_passage_encoder
from atlas_fast.models import FiDReader, Retriever, packaged_minilm_path
from atlas_fast.train.config import ConfigError, TrainConfig

__all__ = [
    "batch_positions",
    "build_models",
    "build_optimizer",
    "collective_device",
    "init_distributed",
    "load_data",
    "resolve_device",
]


def batch_positions(size: int, index: int, batch_size: int, seed: int) -> list[int]:
    """Positions among ``size`` items of batch ``index``: a fixed shuffle per epoch (seeded by ``seed`` + epoch),
    so that a resumed run draws the batches an uninterrupted one would."""
    per_epoch = max(1, size // batch_size)
    epoch, position = divmod(index, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def init_distributed() -> tuple[int, int]:
    """(rank, world size): joins the torchrun group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors of a torch.distributed collective must live: the GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """ "auto" -> this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU; anything else as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available here (use 'auto' or 'cpu')")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo's flags). Without it,
    torch emulates bf16 and an autocast run is several times slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:  # not Linux: assume none
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """ "auto" -> "bf16" on a CUDA device with bf16 or a CPU with bf16 instructions, else "fp32"; others as given."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def load_data(config: TrainConfig) -> tuple[list[Passage], list[Example], list[Example]]:
    """Passages, train and eval examples: explicit jsonl paths, else the bundled task (prepared when missing)."""
    if config.passages:
        if not (config.train_data and config.eval_data):
            raise ConfigError("with passages = ..., give train_data and eval_data too")
        paths = Path(config.passages), Path(config.train_data), Path(config.eval_data)
    else:
        if config.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)} (or give passages/train_data/eval_data)")
        root = ensure_prepared(config.data_root or None)
        paths = root / "wiki" / "passages.jsonl", root / config.task / "train.jsonl", root / config.task / "dev.jsonl"
    passages = read_passages(paths[0])
    train, dev = read_examples(paths[1]), read_examples(paths[2])
    known = {p.id for p in passages}
    for path, examples in ((paths[1], train), (paths[2], dev)):
        unknown = next((e for e in examples if e.passage_id is not None and e.passage_id not in known), None)
        if unknown is not None:  # it would silently count as a retrieval miss
            raise DataFormatError(f"{path}:{unknown.line}: passage_id {unknown.passage_id!r} is not in {paths[0]}")
    if config.max_passages:
        passages = passages[: config.max_passages]
        kept = {p.id for p in passages}
        # A gold passage cut from the corpus would make its example unanswerable by retrieval.
        train = [e for e in train if e.passage_id is None or e.passage_id in kept]
        dev = [e for e in dev if e.passage_id is None or e.passage_id in kept]
    if config.max_train_examples:
        train = train[: config.max_train_examples]
    if config.max_eval_examples:
        dev = dev[: config.max_eval_examples]
    if config.n_context > len(passages):
        raise ConfigError(f"n_context = {config.n_context} is larger than the corpus ({len(passages)} passages)")
    if not train or not dev:
        raise ConfigError("no training or evaluation examples left (check max_passages and the data files)")
    return passages, train, dev


def build_models(config: TrainConfig) -> tuple[Retriever, FiDReader]:
    retriever_path = Path(config.retriever_path) if config.retriever_path else packaged_minilm_path()
    retriever = Retriever.from_pretrained(
        retriever_path,
        untied=config.untied_retriever,
        train_passage_encoder=trains_passage_encoder(config.refresh, config.query_side_only),
        query_max_length=config.query_max_length,
        passage_max_length=config.passage_max_length,
    )
    lengths = {"passage_max_length": config.reader_passage_max_length, "target_max_length": config.target_max_length}
    if config.reader == "t5":
        reader = FiDReader.from_t5(config.reader_path, **lengths)
    else:
        path = config.reader_path or retriever_path
        reader = FiDReader.from_bert_encoder(
            path,
            decoder_layers=config.reader_decoder_layers,
            share_encoder_embeddings=config.reader_share_embeddings,
            **lengths,
        )
    if not config.reader_train_encoder:
        reader.model.encoder.requires_grad_(False)
    if config.gradient_checkpointing:
        for model in (reader.model, retriever.query_encoder, retriever.passage_encoder):
            # transformers ≥ 5 renamed it; earlier versions only have the old name.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
    return retriever, reader


def build_optimizer(config: TrainConfig, retriever: Retriever, reader: FiDReader):
    """AdamW with one learning rate for the reader and one for the retriever, and the warm-up/decay schedule.

    The reader's schedule runs over all steps; the retriever's starts when it unfreezes (after
    freeze_retriever_steps) and runs over the remaining ones, so a long reader warm-up does not
    leave the retriever only the tail of a decayed learning rate.
    """
    groups = [
        ({"params": [p for p in reader.parameters() if p.requires_grad], "lr": config.reader_lr}, 0),
        (
            {"params": [p for p in retriever.parameters() if p.requires_grad], "lr": config.retriever_lr},
            config.freeze_retriever_steps,
        ),
    ]
    groups = [(group, start) for group, start in groups if group["params"]]
    optimizer = torch.optim.AdamW([group for group, _ in groups], weight_decay=config.weight_decay)
    schedules = [functools.partial(_schedule_factor, config, start) for _, start in groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)


def _schedule_factor(config: TrainConfig, start: int, step: int) -> float:
    """Linear warm-up over warmup_steps from ``start``, then linear or cosine decay to 0 at config.steps."""
    step -= start
    if step < 0:
        return 0.0
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - start - config.warmup_steps))
    if config.schedule == "linear":
        return 1.0 - progress
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
