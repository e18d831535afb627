"""Named sections of BENCHMARKS.md that scripts other than render.py own.

A section is the text between ``<!-- section: NAME -->`` and ``<!-- /section: NAME -->``.
gpu_report.py and gpu_check.py replace their own section in place; render.py,
which rewrites the file from pytest-benchmark results, carries every section over.
"""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section: {name} -->", f"<!-- /section: {name} -->"


def sections(text: str) -> list[str]:
    """Every section of ``text``, markers included, in order."""
    pattern = re.compile(r"<!-- section: (\S+) -->.*?<!-- /section: \1 -->", re.DOTALL)
    return [match.group(0) for match in pattern.finditer(text)]


def replace_section(path: Path, name: str, body: str) -> None:
    """Write ``body`` as section ``name`` of the file at ``path``: in place if it exists, else appended."""
    begin, end = _markers(name)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + block + text[stop:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
