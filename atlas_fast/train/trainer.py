"""The Atlas training loop: retrieve, let the reader teach the retriever, train the reader, keep the index fresh.

One optimiser step, per micro-batch of questions:
  retrieve   query encoder (no grad) -> index.search -> K passages (rerank: re-scored candidates)
  re-embed   the retriever re-embeds queries and passages with grad -> scores (B, K)
  gold       the reader scores each passage (PDist / ADist / LOOP / EMDR²), no grad
  reader     FiD forward over the K passages -> reader loss (+ retriever loss)
  backward   gradients (all-reduced across ranks), clipping, AdamW, schedule
  refresh    the refresh policy re-embeds its documents into the index
Each phase is timed; `train_step` returns the times with the losses.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from atlas_fast import losses
from atlas_fast.data.formats import Example, Passage
from atlas_fast.index import DocumentIndex, ShardedIndex, TorchDocumentIndex
from atlas_fast.index.refresh import RefreshPolicy
from atlas_fast.models.modes import eval_mode
from atlas_fast.train import checkpoint
from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.reader_cache import EncodedExamples
from atlas_fast.train.setup import build_models, build_optimizer, init_distributed, load_data, resolve_device

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
        self.device = resolve_device(config.device)
        retriever, reader = models if models is not None else build_models(config)
        self.retriever, self.reader = retriever.to(self.device).train(), reader.to(self.device).train()
        self.optimizer, self.scheduler = build_optimizer(config, self.retriever, self.reader)
        self.refresh = RefreshPolicy(
            config.refresh, config.refresh_every, config.refresh_budget, config.refresh_order, config.rerank_candidates
        )
        self.index = self.new_index()
        self.step = 0
        self.resumed_from: Path | None = None  # the checkpoint `resume` restored
        self.saved_step: int | None = None  # the step of the newest checkpoint written or restored
        self.output_dir = Path(config.output_dir)
        self._warmup_cache: EncodedExamples | None = None  # see warmup_cache_size
        self.normalized_text: dict[str, str] = {}  # passage id -> normalised text, for answer-containment hits
        if self.rank == 0:
            _prepare_output_dir(self.output_dir)

    # ---- helpers ---------------------------------------------------------------------
    @property
    def local_index(self) -> DocumentIndex | TorchDocumentIndex:
        return self.index.local if isinstance(self.index, ShardedIndex) else self.index

    def autocast(self):
        enabled = self.config.precision == "bf16"
        return torch.autocast(self.retriever.device.type, dtype=torch.bfloat16, enabled=enabled)

    def owned_ids(self) -> np.ndarray:
        """The document ids (corpus rows) this rank embeds: row mod world size == rank."""
        return np.arange(self.rank, len(self.passages), self.world_size, dtype=np.int64)

    def embed_documents(self, ids: np.ndarray, progress: bool = False) -> np.ndarray:
        texts = [self.retriever_text(self.passages[i]) for i in ids]
        with self.autocast():
            return self.retriever.embed_passages_for_index(texts, progress=progress and self.config.progress)

    def retriever_text(self, passage: Passage) -> str:
        return self.reader.text_format.format_retriever_passage(passage)

    def queries(self, examples: list[Example]) -> list[str]:
        return [self.reader.text_format.format_query(e.question) for e in examples]

    def labels(self, examples: list[Example]) -> torch.Tensor:
        """(B, T) reader labels: each example's first non-blank answer is its training target."""
        return self.reader.tokenize_targets([e.target for e in examples])

    def log(self, record: dict) -> None:
        if self.rank == 0:
            with (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def logged(self) -> list[dict]:
        """The records of metrics.jsonl so far (a line a crash cut short is left out)."""
        path = self.output_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def _forget_logged_after(self, step: int) -> None:
        """Drop the records of steps after ``step``: a resume replays them, and must not log them twice."""
        if self.rank == 0 and (self.output_dir / "metrics.jsonl").is_file():
            kept = [record for record in self.logged() if record.get("step", 0) <= step]
            temporary = self.output_dir / ".metrics.jsonl.tmp"
            temporary.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
            os.replace(temporary, self.output_dir / "metrics.jsonl")

    # ---- index -----------------------------------------------------------------------
    def _index_device(self) -> torch.device | None:
        """None: host memory (C++ DocumentIndex); else the device of a TorchDocumentIndex."""
        return None if self.config.index_device == "host" else resolve_device(self.config.index_device)

    def new_index(self):
        """An empty index: this rank's shard of a ShardedIndex when distributed."""
        dim, dtype, device = self.retriever.dim, self.config.index_dtype, self._index_device()
        if self.world_size > 1:
            return ShardedIndex(dim, dtype, device=device)
        return DocumentIndex(dim, dtype) if device is None else TorchDocumentIndex(dim, dtype, device)

    def build_index(self) -> None:
        """Embed every document (each rank its own shard) and upsert them at step 0."""
        ids = self.owned_ids()
        self.index.upsert(ids, self.embed_documents(ids, progress=True), step=0)

    def refresh_index(self) -> int:
        """Run the refresh policy after the current step; returns the documents this rank re-embedded."""
        ids = self.refresh.ids_to_refresh(self.step, self.local_index, self.owned_ids)
        vectors = self.embed_documents(ids) if ids.size else np.empty((0, self.retriever.dim), np.float32)
        if self.world_size > 1 or ids.size:
            self.index.upsert(ids, vectors, step=self.step)  # collective for a ShardedIndex
        self.refresh.documents_embedded += int(ids.size)
        return int(ids.size)

    @torch.no_grad()
    def retrieve(self, examples: list[Example], k: int) -> list[list[Passage]]:
        """The top-k passages of each example (rerank: the top-k of fresh scores over the candidates)."""
        with eval_mode(self.retriever):
            with self.autocast():
                query_emb = self.retriever.embed_queries(self.queries(examples))
            _, ids = self.index.search(query_emb.cpu().numpy(), self.refresh.retrieval_depth(k))
            if self.refresh.name == "rerank":
                ids = self._rerank(query_emb, ids, k)
        self.local_index.record_retrieved(ids)
        return [[self.passages[i] for i in row if i >= 0] for row in ids]

    def _rerank(self, query_emb: torch.Tensor, candidate_ids: np.ndarray, k: int) -> np.ndarray:
        flat = candidate_ids.reshape(-1)
        fresh = torch.from_numpy(self.embed_documents(flat)).view(*candidate_ids.shape, -1)
        self.refresh.documents_embedded += int(flat.size)
        scores = torch.einsum("bd,bkd->bk", query_emb.float().cpu(), fresh)
        order = scores.topk(k, dim=1).indices.numpy()
        return np.take_along_axis(candidate_ids, order, axis=1)

    # ---- training --------------------------------------------------------------------
    @property
    def local_train_examples(self) -> list[Example]:
        """This rank's share of the training examples."""
        return self.train_examples[self.rank :: self.world_size]

    def _batch_positions(self, size: int, index: int) -> list[int]:
        """Positions among ``size`` items of micro-batch ``index``: a fixed shuffle per epoch, resumable by index."""
        per_epoch = max(1, size // self.config.batch_size)
        epoch, position = divmod(index, per_epoch)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.config.seed + epoch))
        return order[position * self.config.batch_size : (position + 1) * self.config.batch_size].tolist()

    def micro_batch(self, index: int) -> list[Example]:
        """The examples of micro-batch ``index`` of this rank."""
        local = self.local_train_examples
        return [local[i] for i in self._batch_positions(len(local), index)]

    def train_step(self) -> dict:
        """One optimiser step (``accumulation_steps`` micro-batches); returns losses and per-phase seconds."""
        config = self.config
        times = dict.fromkeys(("retrieve", "reembed", "gold", "reader", "backward", "refresh"), 0.0)
        train_retriever = self.step >= config.freeze_retriever_steps
        cached = not train_retriever and self.warmup_cache_size() > 0
        reader_losses, retriever_losses = [], []
        for micro in range(config.accumulation_steps):
            index = self.step * config.accumulation_steps + micro
            if cached:
                reader_loss, retriever_loss = self._cached_reader_step(index, times), None
            else:
                reader_loss, retriever_loss = self._micro_step(self.micro_batch(index), train_retriever, times)
            reader_losses.append(reader_loss)
            if retriever_loss is not None:
                retriever_losses.append(retriever_loss)
        started = time.perf_counter()
        self._all_reduce_gradients()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip_norm) if config.clip_norm > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        times["backward"] += time.perf_counter() - started
        started = time.perf_counter()
        reembedded = self.refresh_index() if train_retriever else 0  # a frozen encoder leaves nothing stale
        times["refresh"] = time.perf_counter() - started
        record = {
            "step": self.step,
            "reader_loss": float(np.mean(reader_losses)),
            "retriever_loss": float(np.mean(retriever_losses)) if retriever_losses else None,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "documents_reembedded": reembedded,
            **{f"time_{phase}": seconds for phase, seconds in times.items()},
        }
        return record

    def warmup_cache_size(self) -> int:
        """Examples whose reader encoder states the warm-up caches (0: no cache)."""
        if self.config.reader_train_encoder or not self.config.warmup_cache_examples:
            return 0
        return min(self.config.warmup_cache_examples, len(self.local_train_examples))

    def _cached_reader_step(self, index: int, times: dict) -> float:
        """A reader-only warm-up micro-batch over cached encoder states (built on first use)."""
        clock = time.perf_counter()
        if self._warmup_cache is None:
            examples = self.local_train_examples[: self.warmup_cache_size()]
            self._warmup_cache = EncodedExamples(self, examples, progress=self.config.progress and self.rank == 0)
        chosen = self._batch_positions(len(self._warmup_cache), index)
        states, mask, labels = (t.to(self.device) for t in self._warmup_cache.batch(chosen))
        times["retrieve"] += time.perf_counter() - clock
        clock = time.perf_counter()
        with self.autocast():
            reader_loss = self.reader.loss(states, mask, labels, self.config.n_context)
        times["reader"] += time.perf_counter() - clock
        clock = time.perf_counter()
        (reader_loss / self.config.accumulation_steps).backward()
        times["backward"] += time.perf_counter() - clock
        return reader_loss.item()

    def _micro_step(self, examples: list[Example], train_retriever: bool, times: dict) -> tuple[float, float | None]:
        config, K = self.config, self.config.n_context
        clock = time.perf_counter()
        passages = self.retrieve(examples, K)
        times["retrieve"] += time.perf_counter() - clock
        queries = self.queries(examples)
        labels = self.labels(examples)
        input_ids, passage_mask = self.reader.tokenize_passages(queries, passages)
        retriever_loss = torch.zeros(())
        with self.autocast():
            if train_retriever:
                clock = time.perf_counter()
                query_emb = self.retriever.embed_queries(queries)
                passage_emb = self.retriever.embed_passages([self.retriever_text(p) for row in passages for p in row])
                scores = losses.retriever_scores(query_emb, passage_emb.view(len(examples), K, -1))
                times["reembed"] += time.perf_counter() - clock
            clock = time.perf_counter()
            # A frozen reader encoder is run once, in eval mode, for both the gold scores and the FiD pass.
            frozen_encoder = not config.reader_train_encoder
            encoder_context = torch.no_grad() if frozen_encoder else contextlib.nullcontext()
            with encoder_context:
                self.reader.model.encoder.train(not frozen_encoder)
                states, flat_mask = self.reader.encode(input_ids, passage_mask)
            if train_retriever:
                gold_states = states if frozen_encoder else self._eval_encoder_states(input_ids, passage_mask)
                gold = self.reader.gold_scores(
                    config.gold_score_mode,
                    gold_states.detach(),
                    flat_mask,
                    labels,
                    K,
                    config.temperature_gold,
                )
                if config.gold_score_mode == "emdr":
                    retriever_loss = losses.emdr_loss(scores, gold, labels, config.temperature_score)
                else:
                    retriever_loss = losses.kldivloss(scores, gold, config.temperature_score, config.temperature_gold)
                times["gold"] += time.perf_counter() - clock
                clock = time.perf_counter()
            reader_loss = self.reader.loss(states, flat_mask, labels, K)
            times["reader"] += time.perf_counter() - clock
        clock = time.perf_counter()
        ((reader_loss + retriever_loss) / config.accumulation_steps).backward()
        times["backward"] += time.perf_counter() - clock
        return reader_loss.item(), retriever_loss.item() if train_retriever else None

    @torch.no_grad()
    def _eval_encoder_states(self, input_ids: torch.Tensor, passage_mask: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.reader):
            return self.reader.encode(input_ids, passage_mask)[0]

    def _all_reduce_gradients(self) -> None:
        """Average gradients over ranks (data parallelism: one flat all-reduce per step, as DDP's buckets do)."""
        if self.world_size == 1:
            return
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(parameter).clone()
            offset += grad.numel()

    # ---- checkpoints -----------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "retriever": self.retriever.state_dict(),
            "reader": self.reader.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "documents_embedded": self.refresh.documents_embedded,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes model state; every rank its index shard)."""
        self.saved_step = self.step
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
            path, verified = checkpoint.latest_checkpoint(self.output_dir), True
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
        self._forget_logged_after(self.step)
        self.refresh.documents_embedded = int(state["documents_embedded"])
        index_path, device = path / checkpoint.INDEX_FILE, self._index_device()
        if self.world_size > 1:
            self.index = ShardedIndex.load(index_path, device=device)
        elif device is None:
            self.index = DocumentIndex.load(index_path, mmap=False)
        else:
            self.index = TorchDocumentIndex.load(index_path, device)
        return True
