"""The Atlas training loop: retrieve, let the reader teach the retriever, train the reader, keep the index fresh.

One optimiser step, per micro-batch of questions:
  retrieve   query encoder (no grad) -> the refresh policy's retrieval (index.search, or rerank) -> K passages
  reembed    the retriever re-embeds queries and passages with grad -> scores (B, K)
  gold       the reader scores each passage (PDist / ADist / LOOP / EMDR²), no grad
  reader     FiD forward over the K passages -> reader loss (+ retriever loss)
  backward   gradients (DistributedDataParallel reduces them across ranks), clipping, AdamW, schedule
  refresh    the refresh policy re-embeds its documents into the index
The differentiable middle (reembed, gold, reader) is `JointModel.forward` (train/joint.py), the
module DDP wraps. Each phase is timed; `train_step` returns the times with the losses.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from atlas_fast._hashing import passages_sha256, weights_sha256
from atlas_fast.data.formats import Example, Passage
from atlas_fast.index import load_index, open_index
from atlas_fast.index.refresh import RefreshPolicy
from atlas_fast.models.modes import eval_mode
from atlas_fast.train import checkpoint
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.evaluate import Evaluator
from atlas_fast.train.joint import CachedBatch, JointModel, RetrievedBatch
from atlas_fast.train.metrics_log import MetricsLog
from atlas_fast.train.phases import PhaseTimer
from atlas_fast.train.reader_cache import EncodedExamples
from atlas_fast.train.setup import (
    build_models,
    build_optimizer,
    init_distributed,
    load_data,
    resolve_device,
    resolve_precision,
)

__all__ = ["Trainer"]


def _prepare_output_dir(output_dir: Path) -> None:
    """Create output_dir, or say why it cannot hold a run (before any work is done)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output_dir {output_dir}: cannot be created ({error.strerror or error})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {output_dir}: not writable")


class Trainer:
    """Holds models, data, index and optimiser of one run.

    Args:
        config: the run's configuration.
        models: optional (retriever, reader) to use instead of building them from the config.
        data: optional (passages, train examples, eval examples) instead of reading them.
    """

    def __init__(self, config: TrainConfig, models=None, data=None):
        self.config = config
        self.rank, self.world_size = init_distributed()
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        self.passages, self.train_examples, self.eval_examples = data if data is not None else load_data(config)
        self.passages_fingerprint = passages_sha256(self.passages)
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)  # "auto" chosen for this machine
        retriever, reader = models if models is not None else build_models(config)
        self.retriever, self.reader = retriever.to(self.device).train(), reader.to(self.device).train()
        self.optimizer, self.scheduler = build_optimizer(config, self.retriever, self.reader)
        self.phase = PhaseTimer()
        self.model = JointModel(self.retriever, self.reader, config, self.autocast, self.phase)
        # Data parallelism on torch's engine: DDP reduces both models' gradients in buckets during backward.
        # The retriever's parameters get no gradient while it is frozen (the warm-up): find_unused_parameters.
        self.replica = self.model
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.replica = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=True, forward_sync_buffers=False
            )  # no buffer changes in training (no batch norm): nothing to re-broadcast before each forward
        if config.compile:  # forward and backward as one graph each (tests/test_compile.py), DDP's buckets included
            self.replica = torch.compile(self.replica)
        self.refresh = RefreshPolicy(
            config.refresh,
            open_index(self.retriever.dim, config.index_dtype, self._index_device(), distributed=self.world_size > 1),
            self.embed_documents,
            self.owned_ids,
            every=config.refresh_every,
            budget=config.refresh_budget,
            order=config.refresh_order,
            candidates=config.rerank_candidates,
            corrector=config.refresh_corrector,
            write_back=config.rerank_write_back,
            normalize=config.index_normalize,
            ridge=config.corrector_ridge,
        )
        self.evaluator = Evaluator(
            self.reader,
            self.retrieve,
            self.eval_examples,
            eval_k=config.eval_k,
            n_context=config.n_context,
            generate_examples=config.eval_generate_examples,
            autocast=self.autocast,
            rank=self.rank,
            world_size=self.world_size,
            progress=config.progress,
        )
        self.step = 0
        self.resumed_from: Path | None = None  # the checkpoint `resume` restored
        self.saved_step: int | None = None  # the step of the newest checkpoint written or restored
        self.output_dir = Path(config.output_dir)
        self.metrics_log = MetricsLog(self.output_dir / "metrics.jsonl", writer=self.rank == 0)
        self._warmup_cache: EncodedExamples | None = None  # see warmup_cache_size
        self._warmup_examples: list[int] = []  # the cache's positions the question steps train on
        self._dev_cache: EncodedExamples | None = None  # see dev_reader_loss
        if self.rank == 0:
            _prepare_output_dir(self.output_dir)

    # ---- helpers ---------------------------------------------------------------------
    @property
    def index(self):
        """The document index (the refresh policy's: it is the one that keeps it fresh)."""
        return self.refresh.index

    def autocast(self):
        enabled = self.precision == "bf16"
        return torch.autocast(self.retriever.device.type, dtype=torch.bfloat16, enabled=enabled)

    def owned_ids(self) -> np.ndarray:
        """The document ids (corpus rows) this rank embeds: row mod world size == rank."""
        return np.arange(self.rank, len(self.passages), self.world_size, dtype=np.int64)

    def embed_documents(self, ids: np.ndarray, progress: bool = False) -> np.ndarray:
        """(n, d) float32 embeddings of corpus rows ``ids`` by the current passage encoder."""
        texts = [self.retriever_text(self.passages[i]) for i in ids]
        with self.autocast():
            return self.retriever.embed_passages_for_index(texts, progress=progress and self.config.progress)

    def retriever_text(self, passage: Passage) -> str:
        return self.reader.text_format.format_retriever_passage(passage)

    # ---- index -----------------------------------------------------------------------
    def _index_device(self) -> torch.device | None:
        """None: host memory (C++ DocumentIndex); else the device of a TorchDocumentIndex."""
        return None if self.config.index_device == "host" else resolve_device(self.config.index_device)

    def build_index(self) -> None:
        """Embed every document (each rank its own shard) and upsert them at step 0."""
        self.refresh.build()

    @torch.no_grad()
    def retrieve(self, examples: list[Example], k: int, training: bool = False) -> list[list[Passage]]:
        """The top-k passages of each example, as the refresh policy serves them (``training``: for this step's
        batch, which a write-back rerank may refresh the index with)."""
        with eval_mode(self.retriever):
            with self.autocast():
                query_emb = self.retriever.embed_queries(self.reader.queries(examples))
            ids = self.refresh.retrieve(query_emb, k, step=self.step if training else None)
        return [[self.passages[i] for i in row if i >= 0] for row in ids]

    # ---- training --------------------------------------------------------------------
    @property
    def local_train_examples(self) -> list[Example]:
        """This rank's share of the training examples (the warm-up cache's pool)."""
        return self.train_examples[self.rank :: self.world_size]

    def _batch_positions(self, size: int, index: int, batch_size: int) -> list[int]:
        """Positions among ``size`` items of batch ``index``: a fixed shuffle per epoch, resumable by index."""
        per_epoch = max(1, size // batch_size)
        epoch, position = divmod(index, per_epoch)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.config.seed + epoch))
        return order[position * batch_size : (position + 1) * batch_size].tolist()

    def micro_batch(self, index: int) -> list[Example]:
        """This rank's examples of micro-batch ``index``: its share of the global batch of batch_size × world
        examples, so that N ranks train on the batches one process would with N times the batch size."""
        positions = self._batch_positions(len(self.train_examples), index, self.config.batch_size * self.world_size)
        return [self.train_examples[i] for i in positions[self.rank :: self.world_size]]

    def retrieved_batch(self, examples: list[Example]) -> RetrievedBatch:
        """The FiD inputs of ``examples`` over their top-K passages (timed as "retrieve")."""
        with self.phase("retrieve"):
            passages = self.retrieve(examples, self.config.n_context, training=True)
        queries = self.reader.queries(examples)
        input_ids, passage_mask = self.reader.tokenize_passages(queries, passages)
        texts = [self.retriever_text(p) for row in passages for p in row]
        return RetrievedBatch(
            *self.retriever.tokenize_queries(queries),
            *self.retriever.tokenize_passages(texts),
            input_ids,
            passage_mask,
            self.reader.labels(examples),
        )

    def train_step(self) -> dict:
        """One optimiser step (``accumulation_steps`` micro-batches); returns losses and per-phase seconds."""
        config = self.config
        self.phase.reset()
        train_retriever = self.step >= config.freeze_retriever_steps
        cached = not train_retriever and self.warmup_cache_size() > 0
        reader_losses, retriever_losses = [], []
        for micro in range(config.accumulation_steps):
            index = self.step * config.accumulation_steps + micro
            batch = self._cached_batch(index) if cached else self.retrieved_batch(self.micro_batch(index))
            last = micro == config.accumulation_steps - 1
            # DDP reduces gradients in the backward of the last micro-batch only.
            synchronised = self.replica.no_sync() if self.world_size > 1 and not last else contextlib.nullcontext()
            with synchronised:
                reader_loss, retriever_loss = self.replica(batch, train_retriever and not cached)
                with self.phase("backward"):
                    total = reader_loss if retriever_loss is None else reader_loss + retriever_loss
                    (total / config.accumulation_steps).backward()
            reader_losses.append(reader_loss.item())
            if retriever_loss is not None:
                retriever_losses.append(retriever_loss.item())
        with self.phase("backward"):
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip_norm) if config.clip_norm > 0 else None
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        with self.phase("refresh"):
            # A frozen passage encoder leaves nothing stale.
            reembedded = self.refresh.after_step(self.step, encoder_changed=train_retriever)
        return {
            "step": self.step,
            "reader_loss": float(np.mean(reader_losses)),
            "retriever_loss": float(np.mean(retriever_losses)) if retriever_losses else None,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "documents_reembedded": reembedded,
            **{f"time_{phase}": seconds for phase, seconds in self.phase.seconds.items()},
        }

    def warmup_cache_size(self) -> int:
        """Examples whose reader encoder states the warm-up caches (0: no cache)."""
        if self.config.reader_train_encoder or not self.config.warmup_cache_examples:
            return 0
        return min(self.config.warmup_cache_examples, len(self.local_train_examples))

    def _cached_batch(self, index: int) -> CachedBatch:
        """A reader-only warm-up micro-batch over cached encoder states (built on first use; timed as "retrieve").

        The first ``reader_copy_steps`` steps are the title-copy task: single cached passages, each with its
        own title as the target. The steps after it train on the questions, only on those whose K passages
        hold a hit when ``warmup_answerable_only``: a target the passages cannot give teaches the reader to
        answer from the question alone.
        """
        config = self.config
        with self.phase("retrieve"):
            if self._warmup_cache is None:
                self._warmup_cache = EncodedExamples(
                    self.reader,
                    self.retrieve,
                    self.local_train_examples[: self.warmup_cache_size()],
                    config.n_context,
                    self.autocast,
                    progress=config.progress and self.rank == 0,
                )
                cache = self._warmup_cache
                self._warmup_examples = [
                    i for i in range(len(cache)) if cache.answerable[i] or not config.warmup_answerable_only
                ] or list(range(len(cache)))  # none answerable (a tiny corpus): every example rather than none
            cache, K = self._warmup_cache, config.n_context
            if self.step < config.reader_copy_steps:
                chosen = self._batch_positions(len(cache) * K, index, config.reader_copy_batch_size)
                batch = (*cache.passage_batch([divmod(pair, K) for pair in chosen]), 1)
            else:
                chosen = self._batch_positions(len(self._warmup_examples), index, config.batch_size)
                batch = (*cache.batch([self._warmup_examples[i] for i in chosen]), K)
            return CachedBatch(*(t.to(self.device) for t in batch[:3]), batch[3])

    @torch.no_grad()
    def dev_reader_loss(self, batch_size: int = 32) -> float:
        """The reader's loss (mean over target tokens) on the first ``dev_loss_examples`` eval examples over
        their top-K passages, in eval mode: next to the training loss it shows memorisation (a training loss
        that falls while this one does not).

        While the retriever and the reader's encoder are both frozen, the examples' passages and encoder
        states cannot change and are encoded once; afterwards they are encoded again at every call.
        """
        frozen = not self.config.reader_train_encoder and self.step < self.config.freeze_retriever_steps
        if self._dev_cache is None or not frozen:
            examples = self.eval_examples[: self.config.dev_loss_examples]
            self._dev_cache = EncodedExamples(
                self.reader, self.retrieve, examples, self.config.n_context, self.autocast
            )
        cache, total, tokens = self._dev_cache, 0.0, 0
        with eval_mode(self.reader), self.autocast():
            for start in range(0, len(cache), batch_size):
                states, mask, labels = (
                    t.to(self.device) for t in cache.batch(range(start, min(start + batch_size, len(cache))))
                )
                count = int((labels != -100).sum())
                total += self.reader.loss(states, mask, labels, self.config.n_context).item() * count
                tokens += count
        return total / max(tokens, 1)

    # ---- checkpoints -----------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "retriever": self.retriever.state_dict(),
            "reader": self.reader.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            **self.refresh.state_dict(),
        }

    def index_provenance(self) -> dict[str, str]:
        """What the index's rows came from, recorded in its metadata: these passages, in this order, and this
        retriever (its weights now; earlier rows came from its earlier versions)."""
        retriever = weights_sha256(self.retriever)
        return {"passages_fingerprint": self.passages_fingerprint, "retriever_fingerprint": retriever}

    def _check_index_passages(self, path: Path) -> None:
        """Refuse a checkpoint's index built over other passages: its row numbers would name the wrong ones."""
        recorded = self.index.metadata.get("passages_fingerprint")
        if recorded is not None and recorded != self.passages_fingerprint:
            raise ConfigError(
                f"{path / checkpoint.INDEX_FILE} was built over other passages than this run's {len(self.passages)} "
                "(another file, or the same reordered or cut by max_passages): its rows would name the wrong "
                "passages; use the passages and max_passages it was trained with"
            )

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes model state; every rank its index shard)."""
        self.saved_step = self.step
        self.index.metadata.update(self.index_provenance())
        if self.world_size > 1:
            directory = self.output_dir / f".index-{self.step}"
            self.index.save(directory)  # collective: every rank writes its shard
            path = None
            if self.rank == 0:
                path = checkpoint.save_checkpoint(
                    self.output_dir, self.step, self.state(), directory.rename, self.config.to_dict()
                )
            dist.barrier()  # nobody reads the checkpoint before it is complete
            return path
        return checkpoint.save_checkpoint(
            self.output_dir, self.step, self.state(), self.index.save, self.config.to_dict()
        )

    def resume(self, path: str | Path | None = None, verified: bool = False) -> bool:
        """Restore the newest verified (or the given) checkpoint; False when output_dir holds none.

        ``verified``: the caller has just verified ``path`` (see `checkpoint.load_state`).

        Raises:
            CheckpointError: the given checkpoint, or every checkpoint in output_dir, fails verification.
        """
        if path is None:
            path, verified = checkpoint.latest_checkpoint(self.output_dir, set_aside=self.rank == 0), True
            if path is None:
                return False
        path = Path(path)
        state = checkpoint.load_state(path, verified=verified)
        self.resumed_from = path
        self.retriever.load_state_dict(state["retriever"])
        self.reader.load_state_dict(state["reader"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.step = self.saved_step = int(state["step"])
        self.metrics_log.keep_until(self.step)
        self.refresh.index = load_index(
            path / checkpoint.INDEX_FILE, device=self._index_device(), distributed=self.world_size > 1
        )
        self._check_index_passages(path)
        self.refresh.load_state_dict(state)
        return True
