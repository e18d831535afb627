"""How questions, answers and passages become model text (Atlas's templates by default).

Atlas (src/tasks/qa.py, src/atlas.py) writes the query ``question: {q} answer: <extra_id_0>``,
the target ``<extra_id_0> {answer}``, the reader input per passage
``{query} title: {title} context: {text}``; the retriever encodes the formatted query (and the
passage as ``{title} {text}``, `Retriever.passage_text`). `TextFormat.atlas_t5()`
is exactly that. `TextFormat.plain()` drops T5's sentinel tokens for readers whose
vocabulary has none (the MiniLM encoder-decoder) and puts the title first so that it
survives truncation to a short reader input.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas_fast.data.formats import Example, Passage

__all__ = ["TextFormat"]


@dataclass(frozen=True)
class TextFormat:
    query: str = "question: {question} answer: <extra_id_0>"
    target: str = "<extra_id_0> {answer}"
    reader_passage: str = "{query} title: {title} context: {text}"

    @classmethod
    def atlas_t5(cls) -> TextFormat:
        return cls()

    @classmethod
    def plain(cls) -> TextFormat:
        return cls(
            query="{question}",
            target="{answer}",
            reader_passage="title: {title} question: {query} context: {text}",
        )

    def format_query(self, question: str) -> str:
        return self.query.format(question=question)

    def format_queries(self, examples: list[Example]) -> list[str]:
        """The query of each example: what the reader reads before each passage, and what the retriever embeds."""
        return [self.format_query(example.question) for example in examples]

    def format_target(self, answer: str) -> str:
        return self.target.format(answer=answer)

    def format_reader_input(self, query: str, passage: Passage) -> str:
        return self.reader_passage.format(query=query, title=passage.title, text=passage.text)
