"""TrainConfig: defaults, TOML files, --set overrides, and errors that name the key."""

import pytest
import torch

from atlas_fast.train.config import ConfigError, TrainConfig


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('steps = 30\ngold_score_mode = "adist"\neval_k = [1, 20]\nreader_lr = 1\n')
    config = TrainConfig.load(path, ["steps=40", "refresh=full", "precision='bf16'", "untied_retriever=true"])
    assert (config.steps, config.gold_score_mode, config.refresh, config.precision) == (40, "adist", "full", "bf16")
    assert config.eval_k == (1, 20) and config.reader_lr == 1.0 and config.untied_retriever is True
    assert TrainConfig.from_mapping(config.to_dict()) == config


def test_atlas_defaults():
    config = TrainConfig()
    assert (config.temperature_score, config.temperature_gold, config.gold_score_mode) == (0.01, 0.01, "pdist")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stepz=3"], "unknown configuration keys: stepz"),
        (["steps=three"], "steps must be a int"),
        (["steps=0"], r"steps must be in \[1, ∞\)"),
        (["gold_score_mode='ppmean'"], "gold_score_mode must be one of"),
        (["temperature_gold=0"], r"temperature_gold must be in \(0, ∞\)"),
        (["eval_k=[0]"], "eval_k must be a non-empty list of positive integers"),
        (["eval_k=[]"], "eval_k must be a non-empty list of positive integers"),
        (["refresh='rerank'", "rerank_candidates=2"], "rerank_candidates .2. must be ≥ n_context"),
        (["reader='t5'"], "needs reader_path"),
        (["steps"], "--set expects key=value"),
        (["index_device='gpu0'"], "index_device must be auto or host or a torch device"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.load(None, overrides)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.load(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.load(tmp_path / "bad.toml")


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_arithmetic(monkeypatch):
    from atlas_fast.train import setup

    cpu = torch.device("cpu")
    for has_bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(setup, "cpu_has_bf16", lambda has_bf16=has_bf16: has_bf16)
        assert setup.resolve_precision("auto", cpu) == expected
    assert setup.resolve_precision("bf16", cpu) == "bf16" and setup.resolve_precision("fp32", cpu) == "fp32"
    assert TrainConfig().precision == "auto" and TrainConfig().time_budget_s == 0.0  # no wall-clock cut by default
