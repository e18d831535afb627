"""Nothing lost, part 2, for runs: the experiment commands, a corrupted newest checkpoint, checks made up front,
and the command line's exit codes.

Each test asserts the message a user sees and that nothing was lost or changed.
"""

import json
import shutil
from pathlib import Path

import pytest

from atlas_fast import cli
from atlas_fast.experiments.refresh import refresh_experiment
from atlas_fast.testing.tiny import set_arguments, tiny_config, tiny_train_config, write_corpus
from atlas_fast.train import ConfigError, TrainConfig, checkpoint, train

pytestmark = pytest.mark.slow


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what must survive a refused command."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (checkpoints at steps 3 and 6) to copy into each test."""
    root = tmp_path_factory.mktemp("finished")
    train(tiny_config(root, steps=6, checkpoint_every=3))
    return root


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run and its tiny data and models; (config, output folder)."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tiny_config(tmp_path, steps=6, checkpoint_every=3), tmp_path / "run"


@pytest.mark.parametrize("experiment", ["refresh", "refresh-diagnosis"])
def test_an_experiment_refuses_a_folder_with_checkpoints_and_changes_nothing(run_copy, capsys, experiment):
    config, output = run_copy
    before = _snapshot(output)
    arguments = ["experiment", experiment, *set_arguments(config), "--joint-steps", "1"]
    assert cli.main(arguments) == 2
    assert "already holds checkpoints (newest checkpoint-6); the experiment's warm-up" in capsys.readouterr().err
    assert _snapshot(output) == before
    assert cli.main(["train", *set_arguments(config), "--resume"]) == 0
    assert "resumed from step 6" in capsys.readouterr().out  # the run's own newest checkpoint, not a warm-up


def test_a_corrupted_newest_checkpoint_is_named_moved_aside_and_never_pruned(run_copy, capsys):
    config, output = run_copy
    state = output / "checkpoint-6" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    state.write_bytes(data)
    damaged = _snapshot(output / "checkpoint-6")
    assert cli.main(["train", *set_arguments(config), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resumed from step 3" in captured.out
    assert "skipped checkpoint checkpoint-6: " in captured.err and "checksum mismatch" in captured.err
    assert "moved aside to checkpoint-6.corrupt" in captured.err
    assert _snapshot(output / "checkpoint-6.corrupt") == damaged  # kept, byte for byte, after the step-6 save
    assert checkpoint.latest_checkpoint(output) == output / "checkpoint-6"  # the new save, which verifies


def _experiment(config: TrainConfig, *extra: str) -> list[str]:
    return ["experiment", "refresh", *set_arguments(config), "--joint-steps", "1", "--seeds", "0", *extra]


def test_rerunning_an_experiment_in_its_folder_is_refused_and_only_a_matching_one_merges(tmp_path, capsys):
    config = tiny_config(tmp_path, freeze_retriever_steps=1, output_dir=str(tmp_path / "experiment"))
    output = Path(config.output_dir)
    assert cli.main(_experiment(config, "--policies", "none")) == 0
    result = json.loads((output / "refresh_experiment.json").read_text())
    assert "other_task" not in result  # a corpus of one's own: no bundled questions scored against it
    before = _snapshot(output)
    assert cli.main(_experiment(config, "--policies", "full")) == 2
    assert "already holds checkpoints (newest checkpoint-1)" in capsys.readouterr().err
    warm = ["--warm-checkpoint", str(output / "checkpoint-1")]
    changed = TrainConfig.from_mapping({**config.to_dict(), "retriever_lr": 0.5, "gold_score_mode": "emdr"})
    assert cli.main(_experiment(changed, "--policies", "incremental", *warm)) == 2
    error = capsys.readouterr().err
    assert "holds policies run under another configuration (differing: gold_score_mode, retriever_lr)" in error
    assert cli.main(_experiment(config, "--policies", "incremental", *warm, "--joint-steps", "2")) == 2
    assert "(differing: steps, joint_steps)" in capsys.readouterr().err
    assert _snapshot(output) == before
    assert cli.main(_experiment(config, "--policies", "incremental", *warm)) == 0
    merged = json.loads((output / "refresh_experiment.json").read_text())
    assert list(merged["policies"]) == ["none", "incremental"]
    assert merged["policies"]["none"] == result["policies"]["none"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--joint-steps", "-1"], "joint_steps must be an integer ≥ 1; got -1"),
        (["--policies", "none,incremental+budget=abc"], "policy 'incremental+budget=abc': unknown option"),
        (["--policies", "none,full+procrustes"], "policy 'full+procrustes': refresh_corrector"),
        (["--policies", "none,none"], "policies must be distinct names"),
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    ],
)
def test_experiment_arguments_are_checked_before_any_work(tmp_path, capsys, arguments, message):
    config = tiny_config(tmp_path, freeze_retriever_steps=1, output_dir=str(tmp_path / "experiment"))
    assert cli.main(["experiment", "refresh", *set_arguments(config), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not Path(config.output_dir).exists()  # no warm-up ran, nothing was written


def test_checks_that_used_to_come_late(tmp_path, capsys):
    config = tiny_config(tmp_path, freeze_retriever_steps=1, output_dir=str(tmp_path / "experiment"))
    with pytest.raises(ConfigError, match="other_task 'wiki-qa' asks about the bundled corpus"):
        refresh_experiment(config, 1, ("none",), (0,), other_task="wiki-qa")
    with pytest.raises(ConfigError, match='refresh_corrector = "scale" needs refresh = "incremental"'):
        tiny_train_config(refresh="full", refresh_corrector="scale")
    with pytest.raises(ConfigError, match="eval_k must be a non-empty list"):
        tiny_train_config(eval_k=())
    arguments = ["experiment", "refresh-diagnosis", *set_arguments(config), "--probe-every", "0"]
    assert cli.main(arguments) == 2
    assert "probe_every must be an integer ≥ 1; got 0" in capsys.readouterr().err
    assert not Path(config.output_dir).exists()


def test_the_diagnosis_runs_on_a_corpus_of_fewer_than_ten_passages(tmp_path):
    from atlas_fast.experiments.refresh_diagnosis import diagnose_refresh

    (tmp_path / "small").mkdir()
    paths = write_corpus(tmp_path / "small", n_passages=8, n_train=4, n_eval=4)
    config = tiny_config(
        tmp_path,
        passages=str(paths["passages"]),
        train_data=str(paths["train"]),
        eval_data=str(paths["eval"]),
        freeze_retriever_steps=1,
        refresh="incremental",
        refresh_budget=2,
    )
    result = diagnose_refresh(config, joint_steps=2, probe_every=1)
    shares = [row["top10_share"] for row in result["probes"][-1]["groups"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert json.loads((tmp_path / "run" / "refresh_diagnosis.json").read_text())["joint_steps"] == 2
    with pytest.raises(ConfigError, match=r"already holds refresh_diagnosis\.json"):
        diagnose_refresh(config, joint_steps=2, probe_every=1, warm_checkpoint=str(tmp_path / "run" / "checkpoint-1"))


def test_the_command_line_reports_input_errors_and_keeps_a_bugs_traceback(monkeypatch, capsys, tmp_path):
    from atlas_fast.cli import index as commands

    def bug(_):
        raise ValueError("a library bug")

    monkeypatch.setattr(commands, "index_info", bug)
    with pytest.raises(ValueError, match="a library bug"):  # not "error: ..., exit 2", which would lose it
        cli.main(["index", "info", str(tmp_path / "x.afi")])
    monkeypatch.setattr(commands, "index_info", lambda _: (_ for _ in ()).throw(ConfigError("k must be...")))
    assert cli.main(["index", "info", str(tmp_path / "x.afi")]) == 2
    assert "atlas-fast index: error: k must be..." in capsys.readouterr().err
