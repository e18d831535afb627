"""Every public op under torch.compile(fullgraph=True) on CPU: no graph break, and the compiled result equals eager
in value and gradient.

fullgraph=True makes Dynamo raise at the first graph break, so a host synchronisation (a value check read back
with float()/bool()) or a data-dependent shape on the hot path fails here. The aot_eager backend traces forward and
backward through AOTAutograd, as Inductor does, without spending CI minutes on C++ code generation.
"""

import pytest
import torch

from atlas_fast import losses
from atlas_fast.attention import fid_cross_attention
from atlas_fast.testing import assert_close

torch._dynamo.config.cache_size_limit = 64  # one graph per (op, case) below


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _labels(B: int, T: int, vocab: int) -> torch.Tensor:
    labels = torch.randint(0, vocab, (B, T))
    labels[0, -2:] = -100  # padding in one row
    return labels


def _check(fn, inputs: list[torch.Tensor], grad_of: list[int]) -> None:
    """Eager and compiled ``fn(*inputs)``: equal values and equal gradients of the inputs in ``grad_of``."""
    results = []
    for run in (fn, _compiled(fn)):
        leaves = [x.detach().clone().requires_grad_(i in grad_of) for i, x in enumerate(inputs)]
        out = run(*leaves)
        outputs = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(outputs[0].float().sum(), [leaves[i] for i in grad_of]) if grad_of else ()
        results.append(([o.detach() for o in outputs], grads))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    for a, b in zip(eager_out, compiled_out, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_kldivloss_compiles_whole(reduction, masked):
    scores, gold = torch.randn(4, 7), torch.randn(4, 7)
    mask = torch.rand(4, 7) > 0.3 if masked else None
    _check(lambda s, g: losses.kldivloss(s, g, 0.1, 0.05, mask=mask, reduction=reduction), [scores, gold], [0])


@pytest.mark.parametrize("masked", [False, True])
def test_emdr_loss_compiles_whole(masked):
    scores, logprobs = torch.randn(3, 5), torch.randn(3, 5, 6).log_softmax(-1)
    mask = torch.rand(3, 5) > 0.3 if masked else None
    labels = _labels(3, 6, 10)
    _check(lambda s, lp: losses.emdr_loss(s, lp, labels, 0.1, mask=mask), [scores, logprobs], [0])


def test_retriever_scores_compiles_whole():
    _check(losses.retriever_scores, [torch.randn(3, 8), torch.randn(3, 5, 8)], [0, 1])


@pytest.mark.parametrize("op", ["pdist_gold_scores", "emdr_token_logprobs"])
def test_gold_scores_compile_whole(op):
    hidden, weight, labels = torch.randn(2, 3, 5, 8), torch.randn(11, 8), _labels(2, 5, 11)
    with torch.no_grad():
        _check(lambda h, w: getattr(losses, op)(h, w, labels), [hidden, weight], [])


def test_adist_gold_scores_compiles_whole():
    labels = _labels(2, 5, 11)
    _check(lambda m: losses.adist_gold_scores(m, labels, n_layers=3), [torch.rand(2, 5, 4)], [])


@pytest.mark.parametrize("passage_mass", [None, "prob", "vnorm"])
def test_fid_cross_attention_compiles_whole(passage_mass):
    B, NH, T, K, L, D = 2, 2, 3, 4, 5, 8
    q, k, v = torch.randn(B, NH, T, D), torch.randn(B, NH, K * L, D), torch.randn(B, NH, K * L, D)
    attention_mask = torch.rand(B, K * L) > 0.2
    _check(
        lambda q, k, v: fid_cross_attention(q, k, v, attention_mask, K, passage_mass=passage_mass),
        [q, k, v],
        [0, 1, 2],
    )


def test_value_checks_run_in_eager_cpu_mode_and_in_debug_mode_only(monkeypatch):
    """On any device but the CPU (a meta tensor stands in for CUDA here) a value check would synchronise the host."""
    from atlas_fast._validation import value_checks

    cpu, elsewhere = torch.zeros(2), torch.zeros(2, device="meta")
    assert value_checks(cpu) and not value_checks(elsewhere)
    monkeypatch.setenv("ATLAS_FAST_DEBUG", "1")
    assert value_checks(elsewhere)
    monkeypatch.setenv("ATLAS_FAST_CHECK_FINITE", "0")
    assert not value_checks(cpu) and not value_checks(elsewhere)


def _deterministic_trainer(tmp_path, **overrides):
    """A Trainer over the tiny setup with a dropout-free retriever (eager and compiled runs draw no randomness),
    its index built."""
    from atlas_fast.testing.tiny import tiny_config, write_tiny_bert
    from atlas_fast.train import Trainer

    model = tmp_path / "bert-no-dropout"
    if not model.is_dir():
        write_tiny_bert(model, dropout=0.0)
    trainer = Trainer(tiny_config(tmp_path, retriever_path=str(model), progress=False, **overrides))
    trainer.build_index()
    return trainer


def _joint_losses_and_grads(model, batch, train_retriever: bool, compiled: bool):
    model.zero_grad(set_to_none=True)
    run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
    reader_loss, retriever_loss = run(batch, train_retriever)
    total = reader_loss if retriever_loss is None else reader_loss + retriever_loss
    total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [reader_loss.detach(), None if retriever_loss is None else retriever_loss.detach()], grads


@pytest.mark.slow
@pytest.mark.parametrize("gold_score_mode", ["pdist", "emdr", "adist", "loop"])
def test_joint_step_compiles_whole_and_equals_eager(tmp_path, gold_score_mode):
    """JointModel's forward and backward (re-embedding, reader encoder, gold scores, retriever loss, FiD reader loss)
    as one graph, for every gold-score mode (LOOP's swapped cross-attention projections included)."""
    trainer = _deterministic_trainer(tmp_path, gold_score_mode=gold_score_mode)
    batch = trainer.retrieved_batch(trainer.micro_batch(0))
    eager_losses, eager_grads = _joint_losses_and_grads(trainer.model, batch, True, compiled=False)
    compiled_losses, compiled_grads = _joint_losses_and_grads(trainer.model, batch, True, compiled=True)
    for a, b in zip(eager_losses, compiled_losses, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys() and any(n.startswith("retriever.") for n in eager_grads)
    for name, grad in eager_grads.items():
        assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_option_trains_what_eager_trains(tmp_path):
    """`compile = true` (Inductor's default backend) over two steps: the same losses as the eager trainer."""
    records = {}
    for compiled in (False, True):
        trainer = _deterministic_trainer(
            tmp_path, output_dir=str(tmp_path / f"run-{compiled}"), freeze_retriever_steps=0, compile=compiled
        )
        records[compiled] = [trainer.train_step() for _ in range(2)]
    for eager, compiled in zip(records[False], records[True], strict=True):
        assert compiled["reader_loss"] == pytest.approx(eager["reader_loss"], rel=1e-4)
        assert compiled["retriever_loss"] == pytest.approx(eager["retriever_loss"], rel=1e-4)
