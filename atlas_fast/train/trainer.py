"""The Atlas training loop: retrieve, let the reader teach the retriever, train the reader, keep the index fresh.

One optimiser step, per micro-batch of questions:
  retrieve   query encoder (no grad) -> the refresh policy's retrieval (index.search, or rerank) -> K passages
  reembed    the retriever re-embeds queries and passages with grad -> scores (B, K)
  gold       the reader scores each passage (PDist / ADist / LOOP / EMDR²), no grad
  reader     FiD forward over the K passages -> reader loss (+ retriever loss)
  backward   gradients (DDP all-reduces them across ranks; FSDP reduce-scatters them), clipping, AdamW, schedule
  refresh    the refresh policy re-embeds its documents into the index
The differentiable middle (reembed, gold, reader) is `JointModel.forward` (train/joint.py), the
module DDP wraps or FSDP shards (train/sharding.py). Retrieval and the documents the refresh policy
embeds come from train/retrieval.py; the reader warm-up's steps (retriever frozen) from train/warmup.py.
Each phase is timed; `train_step` returns the times with the losses.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from atlas_fast._hashing import passages_sha256, weights_sha256
from atlas_fast.data.formats import Example
from atlas_fast.index import load_index, open_index
from atlas_fast.index.refresh import RefreshPolicy
from atlas_fast.models import Retriever
from atlas_fast.train import checkpoint, sharded_checkpoint, sharding
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.evaluate import Evaluator
from atlas_fast.train.joint import JointModel, RetrievedBatch
from atlas_fast.train.metrics_log import MetricsLog
from atlas_fast.train.phases import PhaseTimer
from atlas_fast.train.retrieval import Corpus, Retrieval
from atlas_fast.train.setup import (
    batch_positions,
    build_models,
    build_optimizer,
    init_distributed,
    load_data,
    resolve_device,
    resolve_precision,
)
from atlas_fast.train.warmup import ReaderWarmup

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
        # The run's precision context, given to every collaborator that runs a model: `with self.autocast(): ...`.
        bf16 = self.precision == "bf16"
        self.autocast = functools.partial(torch.autocast, self.device.type, dtype=torch.bfloat16, enabled=bf16)
        retriever, reader = models if models is not None else build_models(config)
        self.retriever, self.reader = retriever.to(self.device).train(), reader.to(self.device).train()
        self.phase = PhaseTimer()
        self.model = JointModel(self.retriever, self.reader, config, self.autocast, self.phase)
        self.sharded = config.parallel == "fsdp" and self.world_size > 1
        if self.sharded:
            sharding.shard_joint_model(self.model, self.precision)
        # The passes outside the joint model's forward run inside `with self.gathered(*parts): ...`: sharded
        # weights are all-gathered once per pass. Replicated ones need nothing (nullcontext ignores `parts`).
        self.gathered = functools.partial(sharding.gathered, self.model) if self.sharded else contextlib.nullcontext
        self.optimizer, self.scheduler = build_optimizer(config, self.retriever, self.reader)  # after sharding
        # Data parallelism on torch's engine: DDP reduces both models' gradients in buckets during backward.
        # The retriever's parameters get no gradient while it is frozen (the warm-up): find_unused_parameters.
        self.replica = self.model
        if self.world_size > 1 and not self.sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.replica = DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=True, forward_sync_buffers=False
            )  # no buffer changes in training (no batch norm): nothing to re-broadcast before each forward
        if config.compile:  # forward and backward as one graph each (tests/test_compile.py), DDP's buckets included
            self.replica = torch.compile(self.replica)
        self.corpus = Corpus(self.passages, self.retriever, self.autocast, rank=self.rank, world_size=self.world_size)
        self.refresh = RefreshPolicy(
            config.refresh,
            open_index(self.retriever.dim, config.index_dtype, self._index_device(), distributed=self.world_size > 1),
            self.corpus.embed,
            self.corpus.owned_ids,
            every=config.refresh_every,
            budget=config.refresh_budget,
            order=config.refresh_order,
            candidates=config.rerank_candidates,
            corrector=config.refresh_corrector,
            write_back=config.rerank_write_back,
            normalize=config.index_normalize,
            ridge=config.corrector_ridge,
            corrector_fit=config.corrector_fit,
        )
        self.retrieval = Retrieval(self.retriever, self.refresh, self.passages, self.reader.text_format, self.autocast)
        self.warmup = ReaderWarmup(
            config,
            self.reader,
            self.retrieval.retrieve,
            self.train_examples[self.rank :: self.world_size],
            self.eval_examples,
            self.autocast,
            self.device,
            gathered=self.gathered,
            progress=config.progress and self.rank == 0,
        )
        self.evaluator = Evaluator(
            self.reader,
            self.retrieval.retrieve,
            self.eval_examples,
            eval_k=config.eval_k,
            n_context=config.n_context,
            generate_examples=config.eval_generate_examples,
            autocast=self.autocast,
            gathered=self.gathered,
            rank=self.rank,
            world_size=self.world_size,
            progress=config.progress,
        )
        self.step = 0
        self.resumed_from: Path | None = None  # the checkpoint `resume` restored
        self.saved_step: int | None = None  # the step of the newest checkpoint written or restored
        self.output_dir = Path(config.output_dir)
        self.metrics_log = MetricsLog(self.output_dir / "metrics.jsonl", writer=self.rank == 0)
        if self.rank == 0:
            _prepare_output_dir(self.output_dir)

    # ---- helpers ---------------------------------------------------------------------
    @property
    def index(self):
        """The document index (the refresh policy's: it is the one that keeps it fresh)."""
        return self.refresh.index

    # ---- index -----------------------------------------------------------------------
    def _index_device(self) -> torch.device | None:
        """None: host memory (C++ DocumentIndex); else the device of a TorchDocumentIndex."""
        return None if self.config.index_device == "host" else resolve_device(self.config.index_device)

    def build_index(self) -> None:
        """Embed every document (each rank its own shard) and upsert them at step 0."""
        with self.gathered(self.retriever):
            self.refresh.build()

    # ---- training --------------------------------------------------------------------
    def micro_batch(self, index: int) -> list[Example]:
        """This rank's examples of micro-batch ``index``: its share of the global batch of batch_size × world
        examples, so that N ranks train on the batches one process would with N times the batch size."""
        size = self.config.batch_size * self.world_size
        positions = batch_positions(len(self.train_examples), index, size, self.config.seed)
        return [self.train_examples[i] for i in positions[self.rank :: self.world_size]]

    def retrieved_batch(self, examples: list[Example]) -> RetrievedBatch:
        """The FiD inputs of ``examples`` over their top-K passages (timed as "retrieve")."""
        with self.phase("retrieve"), self.gathered(self.retriever):
            passages = self.retrieval.retrieve(examples, self.config.n_context, step=self.step)
        queries = self.reader.text_format.format_queries(examples)
        input_ids, passage_mask = self.reader.tokenize_passages(queries, passages)
        texts = [Retriever.passage_text(p) for row in passages for p in row]
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
        cached = not train_retriever and self.warmup.cache_size() > 0
        reader_losses, retriever_losses = [], []
        for micro in range(config.accumulation_steps):
            index = self.step * config.accumulation_steps + micro
            if cached:
                with self.phase("retrieve"):
                    batch = self.warmup.batch(self.step, index)
            else:
                batch = self.retrieved_batch(self.micro_batch(index))
            last = micro == config.accumulation_steps - 1
            # DDP and FSDP reduce gradients in the backward of the last micro-batch only.
            synchronised = contextlib.nullcontext()
            if self.sharded:
                self.model.set_requires_gradient_sync(last)
            elif self.world_size > 1 and not last:
                synchronised = self.replica.no_sync()
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
        with self.phase("refresh"), self.gathered(self.retriever):
            # A frozen passage encoder leaves nothing stale.
            reembedded = self.refresh.after_step(self.step, encoder_changed=train_retriever)
        return {
            "step": self.step,
            "reader_loss": float(np.mean(reader_losses)),
            "retriever_loss": float(np.mean(retriever_losses)) if retriever_losses else None,
            "grad_norm": None if grad_norm is None else float(grad_norm.full_tensor() if self.sharded else grad_norm),
            "documents_reembedded": reembedded,
            **{f"time_{phase}": seconds for phase, seconds in self.phase.seconds.items()},
        }

    # ---- checkpoints -----------------------------------------------------------------
    def state(self) -> dict:
        """What state.pt holds. Under ``parallel = "fsdp"`` the models and the optimizer's tensors are
        written as shards instead (`save_checkpoint`); state.pt keeps the optimizer's param_groups."""
        state = {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            **self.refresh.state_dict(),
        }
        if self.config.parallel == "ddp":
            state |= {
                "retriever": self.retriever.state_dict(),
                "reader": self.reader.state_dict(),
                "optimizer": self.optimizer.state_dict(),
            }
        return state

    def index_provenance(self) -> dict[str, str]:
        """What the index's rows came from, recorded in its metadata: these passages, in this order, and this
        retriever (its weights now; earlier rows came from its earlier versions)."""
        retriever = weights_sha256(sharding.full_state_dict(self.retriever))
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
        """Write a checkpoint of the current step (rank 0 writes state.pt; every rank its index shard and, under
        ``parallel = "fsdp"``, its model and optimizer shards)."""
        self.saved_step = self.step
        self.index.metadata.update(self.index_provenance())
        state = self.state()
        writers = {checkpoint.INDEX_FILE: self.index.save}
        if self.config.parallel == "fsdp":
            tensors, state["optimizer"] = sharded_checkpoint.state_dicts(self.model, self.optimizer)
            writers[checkpoint.MODEL_DIR] = functools.partial(sharded_checkpoint.write_shards, tensors)
        if self.world_size == 1:
            return checkpoint.save_checkpoint(self.output_dir, self.step, state, writers, self.config.to_dict())
        # Every rank writes its shards (collectives) beside the checkpoint; rank 0 moves them into it.
        staging = {name: self.output_dir / f".{name}-{self.step}" for name in writers}
        if self.rank == 0:  # a save of this step that crashed left its staging: its files must not join this one
            for staged in staging.values():
                shutil.rmtree(staged, ignore_errors=True)
        dist.barrier()
        for name, write in list(writers.items()):
            staged = staging[name]
            write(staged)
            writers[name] = staged.rename
        path = None
        if self.rank == 0:
            path = checkpoint.save_checkpoint(self.output_dir, self.step, state, writers, self.config.to_dict())
        dist.barrier()  # nobody reads the checkpoint before it is complete
        return path

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
        if (path / checkpoint.MODEL_DIR).is_dir():  # shards: any world size, sharded or not, reads them
            sharded_checkpoint.load_shards(path / checkpoint.MODEL_DIR, self.model, self.optimizer, state["optimizer"])
        elif self.sharded:
            raise checkpoint.CheckpointError(
                f'{path}: written by a parallel = "ddp" run (whole models in {checkpoint.STATE_FILE}); resume it '
                'with parallel = "ddp"'
            )
        else:
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
