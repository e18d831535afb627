"""Atlas-format data: jsonl passages and QA examples, query/target/passage formatting, the bundled default data."""

from atlas_fast.data.formats import Example, Passage, read_examples, read_passages, write_jsonl

__all__ = ["Example", "Passage", "read_examples", "read_passages", "write_jsonl"]
