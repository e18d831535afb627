"""benchmarks/memory_projection.py counts the published sizes of Atlas's models and prints docs/memory.md's table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("memory_projection", ROOT / "benchmarks" / "memory_projection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_counts_are_the_published_model_sizes_and_the_table_is_the_documented_one():
    projection = _module()
    reader, retriever = projection._reader(*projection.READERS["T5-base"]), projection._retriever()
    assert projection._count(reader) == 247_577_856  # google/t5-base-lm-adapt (T5 v1.1 base)
    assert projection._count(retriever) == 108_891_648  # BERT-base without its pooler (Contriever)
    one, eight = projection.project(reader, retriever, 1), projection.project(reader, retriever, 8)
    assert one["ddp"] == eight["ddp"] == 16 * (247_577_856 + 108_891_648) / projection.GIB
    assert eight["fsdp"] < one["fsdp"] and one["fsdp"] > one["ddp"]  # sharding pays off only past one rank
    assert projection.table() in (ROOT / "docs" / "memory.md").read_text()
