"""Atlas's jsonl formats, read with errors that name the file and line.

Passages: one JSON object per line, ``{"id", "title", "text"[, "section"]}``.
QA examples: ``{"question", "answers"[, "id"][, "passage_id"]}``; ``answers`` is a
non-empty list of strings (a bare string is accepted as a one-answer list, as in
Atlas's ``target`` field). ``passage_id`` is an atlas_fast extension: the id of the
gold passage where it is known, which makes retrieval recall exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataFormatError", "Example", "Passage", "read_examples", "read_passages", "write_jsonl"]


class DataFormatError(ValueError):
    """A data file is missing, empty or holds a malformed record; the message names file and line."""


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Example:
    question: str
    answers: tuple[str, ...]
    id: str = ""
    passage_id: str | None = None
    line: int = dataclasses.field(default=0, compare=False)  # where it was read, for error messages

    @property
    def target(self) -> str:
        """The training target: the first non-blank answer (the reader never trains on an end token alone)."""
        return next(answer for answer in self.answers if answer.strip())


def _records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(f"{path}:{number}: not UTF-8 text (byte {error.start} of the line)") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                json.dumps(record, ensure_ascii=False).encode("utf-8")  # lone surrogates ("\ud800") fail here
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            except RecursionError:
                raise DataFormatError(f"{path}:{number}: JSON nested too deeply") from None
            except UnicodeEncodeError:
                raise DataFormatError(f"{path}:{number}: holds a lone surrogate (\\ud800-\\udfff), not text") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _string_field(path: Path, number: int, record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and key == "id":
        return str(value)
    if not isinstance(value, str):
        missing = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise DataFormatError(f"{path}:{number}: field {key!r} is {missing}")
    return value


def read_passages(path: str | os.PathLike) -> list[Passage]:
    """All passages of an Atlas passages jsonl file; ids must be unique and the file non-empty."""
    passages, seen = [], set()
    for number, record in _records(path):
        passage = Passage(
            id=_string_field(Path(path), number, record, "id"),
            title=_string_field(Path(path), number, record, "title", required=False),
            text=_string_field(Path(path), number, record, "text"),
        )
        if passage.id in seen:
            raise DataFormatError(f"{path}:{number}: duplicate passage id {passage.id!r}")
        seen.add(passage.id)
        passages.append(passage)
    if not passages:
        raise DataFormatError(f"{path}: the corpus is empty (no passages)")
    return passages


def read_examples(path: str | os.PathLike) -> list[Example]:
    """All QA examples of an Atlas QA jsonl file; every example needs at least one answer."""
    examples = []
    for number, record in _records(path):
        question = _string_field(Path(path), number, record, "question")
        answers = record.get("answers", record.get("target"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(f"{path}:{number}: field 'answers' must be a list of strings")
        if not [a for a in answers if a.strip()]:
            raise DataFormatError(f"{path}:{number}: the question has no answers")
        passage_id = record.get("passage_id")
        examples.append(
            Example(
                question=question,
                answers=tuple(answers),
                id=_string_field(Path(path), number, record, "id", required=False) or str(number),
                passage_id=None if passage_id is None else str(passage_id),
                line=number,
            )
        )
    if not examples:
        raise DataFormatError(f"{path}: no examples")
    return examples


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records one per line, atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temporary, path)
