"""A tiny Atlas setup: a synthetic corpus and QA files, tiny BERT and T5 checkpoints, the configuration over them.

Used by the trainer's tests, the train-step benchmark and `atlas-fast smoke`.

The models are randomly initialised, a few thousand parameters wide; the tokenizer is the
packaged MiniLM's (its vocabulary file only). Questions ask for a passage's title from a
phrase of its text, so the gold passage of every example is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, BertConfig, BertModel

from atlas_fast.models import packaged_minilm_path
from atlas_fast.train.config import TrainConfig

WORDS = [
    "river",
    "mountain",
    "castle",
    "empire",
    "violin",
    "comet",
    "harbor",
    "desert",
    "glacier",
    "temple",
    "falcon",
    "orchard",
    "canyon",
    "lantern",
    "meadow",
    "bridge",
    "island",
    "forest",
    "volcano",
    "library",
]


def write_corpus(directory: Path, n_passages: int = 120, n_train: int = 16, n_eval: int = 8) -> dict[str, Path]:
    """passages.jsonl, train.jsonl and eval.jsonl under ``directory``; returns their paths."""
    rng = np.random.default_rng(0)
    passages, examples = [], []
    for row in range(n_passages):
        a, b, c = rng.choice(WORDS, 3, replace=False)
        title = f"{a.title()} {row}"
        passages.append({"id": f"p{row}", "title": title, "text": f"{title} is a {b} near the {c}."})
        examples.append(
            {"id": f"q{row}", "question": f"which {b} is near the {c}?", "answers": [title], "passage_id": f"p{row}"}
        )
    paths = {name: directory / f"{name}.jsonl" for name in ("passages", "train", "eval")}
    splits = {"passages": passages, "train": examples[:n_train], "eval": examples[n_train : n_train + n_eval]}
    for name, records in splits.items():
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


def write_tiny_bert(directory: Path, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-wide BERT checkpoint with the MiniLM tokenizer (``dropout`` 0: a deterministic model)."""
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_t5(directory: Path) -> Path:
    """A 2-layer, 32-wide T5 checkpoint with the byte-level ByT5 tokenizer (which needs no vocabulary file)."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=384,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(config).save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return directory


def tiny_train_config(**overrides) -> TrainConfig:
    """A few steps of tiny models over a small corpus: the tests' configuration (paths from ``overrides``)."""
    values = dict(
        steps=6,
        batch_size=4,
        n_context=3,
        refresh_budget=16,
        eval_generate_examples=8,
        max_eval_examples=16,
        warmup_steps=1,
        checkpoint_every=3,
        progress=False,
        reader_lr=1e-3,
        retriever_lr=1e-4,
        eval_k=(1, 3),
        freeze_retriever_steps=0,
        warmup_cache_examples=0,
        reader_copy_steps=0,
        precision="fp32",
        time_budget_s=0.0,
    )
    values.update(overrides)
    return TrainConfig.from_mapping(values)


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    """The tiny configuration over the synthetic corpus and the tiny BERT (written once under tmp_path)."""
    model = tmp_path / "tiny-bert"
    if not model.is_dir():
        write_tiny_bert(model)
    paths = (
        write_corpus(tmp_path)
        if not (tmp_path / "passages.jsonl").is_file()
        else {name: tmp_path / f"{name}.jsonl" for name in ("passages", "train", "eval")}
    )
    values = dict(
        passages=str(paths["passages"]),
        train_data=str(paths["train"]),
        eval_data=str(paths["eval"]),
        retriever_path=str(model),
        output_dir=str(tmp_path / "run"),
    )
    values.update(overrides)
    return tiny_train_config(**values)


def data_parallel_config(tmp_path: Path, output: str, batch_size: int, **overrides) -> TrainConfig:
    """The distributed tests' run over the tiny corpus: the tiny BERT without dropout (written by the test under
    tmp_path/bert-no-dropout, so that runs are deterministic), one step of reader warm-up (the retriever frozen),
    then joint PDist steps with a full refresh every 2 steps; no checkpoints unless asked for."""
    values = dict(
        retriever_path=str(tmp_path / "bert-no-dropout"),
        output_dir=str(tmp_path / output),
        batch_size=batch_size,
        freeze_retriever_steps=1,
        refresh="full",
        refresh_every=2,
        checkpoint_every=0,
    )
    return tiny_config(tmp_path, **(values | overrides))


def set_arguments(config: TrainConfig) -> list[str]:
    """The `atlas-fast train` arguments (`--set key=value`, values as JSON) that give exactly `config`."""
    return [arg for key, value in config.to_dict().items() for arg in ("--set", f"{key}={json.dumps(value)}")]
