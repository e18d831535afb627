"""Every specialisation the host launchers in atlas_fast/kernels/ can produce, at the benchmarks' shapes.

A case calls one real launcher (atlas_fast/kernels/*.py) on CPU tensors of its shapes inside
`driver.compile_only`, so what compiles is what that launch would compile on the
GPU. Each case also states the work its kernels must do — the bytes they must move
and the FLOPs they must compute — from which the report derives its roofline bound.

Coverage: dtypes (fp32, fp16, bf16 where the kernel takes them), mask on and off,
every reduction, gradient on and off, small and large K (up to the kernels'
limits), both mass kinds, dropout on and off, the backward kernels, index_topk at
1, 64 and 512 queries and at k = 16, 100 and the kernels' largest k. `tests/test_compile_gate.py`
fails when a kernel in atlas_fast/kernels/ is launched by no case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from atlas_fast.reference.index_topk import SEARCH_MAX_K
from atlas_fast.reference.losses import EMDR_LOSS_MAX_K, KLDIVLOSS_MAX_K

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_DTYPES = ("fp16", "bf16")


@dataclasses.dataclass(frozen=True)
class Work:
    """What one kernel launch must do at minimum: bytes moved to or from HBM, and FLOPs."""

    bytes: float
    flops: float = 0.0
    tensor_cores: bool = False  # the FLOPs are fp16/bf16 dots (else fp32 FMA)


@dataclasses.dataclass(frozen=True)
class Case:
    """One launcher call. ``work`` maps each kernel the call launches to its minimal work."""

    name: str
    dtype: str  # the dtype of the data the kernels' dots and loads see
    run: Callable[[], object]
    work: dict[str, Work]


def _size(dtype: str) -> int:
    return torch.finfo(DTYPES[dtype]).bits // 8


# ---------------------------------------------------------------------------- kldivloss


def _kldivloss_case(B: int, K: int, dtype: str, mask: bool, reduction: str, grad: bool) -> Case:
    from atlas_fast import ops

    def run():
        scores = torch.randn(B, K, dtype=DTYPES[dtype], requires_grad=grad)
        gold = torch.randn(B, K, dtype=DTYPES[dtype])
        passage_mask = torch.ones(B, K, dtype=torch.bool) if mask else None
        loss = ops.kldivloss(scores, gold, mask=passage_mask, reduction=reduction)
        if grad:
            loss.backward(torch.ones_like(loss))

    flags = f"{'mask' if mask else 'nomask'} {reduction} {'grad' if grad else 'nograd'}"
    return Case(
        f"kldivloss B={B} K={K} {dtype} {flags}", dtype, run, kldivloss_work(B, K, dtype, mask, reduction, grad)
    )


def kldivloss_work(B: int, K: int, dtype: str, mask: bool, reduction: str, grad: bool) -> dict[str, Work]:
    """Per kernel: read scores, gold (and mask) once, write the loss or the gradient once."""
    elements = B * K
    read = elements * (2 * _size(dtype) + (1 if mask else 0))
    forward_write = elements * 4 if reduction == "none" or grad else 4
    work = {"_kldiv_fwd_kernel": Work(read + forward_write, 12 * elements)}
    if grad and reduction == "none":
        work["_kldiv_bwd_pointwise_kernel"] = Work(read + elements * (4 + _size(dtype)), 14 * elements)
    return work


def kldivloss_cases() -> list[Case]:
    cases = []
    for dtype in DTYPES:
        for mask in (False, True):
            for reduction in ("mean", "batchmean", "sum", "none"):
                cases.append(_kldivloss_case(64, 40, dtype, mask, reduction, grad=True))
    cases.append(_kldivloss_case(64, 40, "fp32", False, "mean", grad=False))
    for B, K in ((8, 20), (512, 100), (64, 1024), (8, KLDIVLOSS_MAX_K)):  # the benchmarks' shape classes and the limit
        cases.append(_kldivloss_case(B, K, "fp32", False, "mean", grad=True))
        cases.append(_kldivloss_case(B, K, "bf16", True, "none", grad=True))
    return cases


# ---------------------------------------------------------------------------- emdr_loss


def _emdr_loss_case(B: int, K: int, T: int, dtype: str, mask: bool, grad: bool) -> Case:
    from atlas_fast import ops

    def run():
        scores = torch.randn(B, K, dtype=DTYPES[dtype], requires_grad=grad)
        logprobs = torch.randn(B, K, T, dtype=DTYPES[dtype])
        labels = torch.zeros(B, T, dtype=torch.int64)
        passage_mask = torch.ones(B, K, dtype=torch.bool) if mask else None
        loss = ops.emdr_loss(scores, logprobs, labels, mask=passage_mask)
        if grad:
            loss.backward()

    flags = f"{'mask' if mask else 'nomask'} {'grad' if grad else 'nograd'}"
    return Case(f"emdr_loss B={B} K={K} T={T} {dtype} {flags}", dtype, run, emdr_loss_work(B, K, T, dtype, mask, grad))


def emdr_loss_work(B: int, K: int, T: int, dtype: str, mask: bool, grad: bool) -> dict[str, Work]:
    """Read the (B, K, T) log-probabilities, scores and labels once; write the (B, K) gradient."""
    read = B * K * T * _size(dtype) + B * K * (_size(dtype) + (1 if mask else 0)) + B * T * 8
    return {"_emdr_fwd_kernel": Work(read + (B * K * 4 if grad else 4), 8 * B * K * T)}


def emdr_loss_cases() -> list[Case]:
    cases = [_emdr_loss_case(64, 40, 16, dtype, mask, True) for dtype in DTYPES for mask in (False, True)]
    cases.append(_emdr_loss_case(64, 40, 16, "fp32", False, grad=False))
    for B, K in ((8, 20), (512, 100), (64, 1024), (8, EMDR_LOSS_MAX_K)):
        cases.append(_emdr_loss_case(B, K, 16, "fp32", True, grad=True))
    return cases


# ---------------------------------------------------------------------------- token log-probabilities


def _gold_scores_case(n_rows: int, hidden_size: int, vocab: int, dtype: str) -> Case:
    from atlas_fast.kernels.gold_scores import token_logprobs_triton

    def run():
        hidden = torch.randn(n_rows, hidden_size, dtype=DTYPES[dtype])
        weight = torch.randn(vocab, hidden_size, dtype=DTYPES[dtype])
        token_logprobs_triton(hidden, weight, torch.zeros(n_rows, dtype=torch.int64))

    name = f"gold_scores N={n_rows} H={hidden_size} V={vocab} {dtype}"
    return Case(name, dtype, run, gold_scores_work(n_rows, hidden_size, vocab, dtype))


def gold_scores_work(n_rows: int, hidden_size: int, vocab: int, dtype: str) -> dict[str, Work]:
    """The LM-head matmul's FLOPs; hidden states and head read once, one float per row written."""
    read = (n_rows + vocab) * hidden_size * _size(dtype) + n_rows * 8
    work = Work(read + n_rows * 4, 2 * n_rows * vocab * hidden_size, tensor_cores=dtype in HALF_DTYPES)
    return {"_token_logprobs_kernel": work}


def gold_scores_cases() -> list[Case]:
    # N = B·K·T target tokens of the PDist/EMDR² single-passage passes (B·K = 2560, T = 16; and B·K = 2, T = 8).
    cases = [_gold_scores_case(2560 * 16, hidden, 32128, dtype) for dtype in DTYPES for hidden in (512, 1024)]
    cases += [_gold_scores_case(16, 512, 32128, dtype) for dtype in DTYPES]
    return cases


# ---------------------------------------------------------------------------- FiD cross-attention


def _attention_case(B, NH, T, K, L, D, dtype, mass, dropout, backward) -> Case:
    from atlas_fast import ops

    def run():
        q = torch.randn(B, NH, T, D, dtype=DTYPES[dtype], requires_grad=backward)
        k = torch.randn(B, NH, K * L, D, dtype=DTYPES[dtype], requires_grad=backward)
        v = torch.randn(B, NH, K * L, D, dtype=DTYPES[dtype], requires_grad=backward)
        mask = torch.ones(B, K * L, dtype=torch.bool)
        out, _ = ops.fid_cross_attention(q, k, v, mask, K, passage_mass=mass, dropout_p=dropout, seed=1)
        if backward:
            out.sum().backward()

    name = f"attention B={B} NH={NH} T={T} K={K} L={L} Dh={D} {dtype} {mass} dropout={dropout}"
    work = attention_work(B, NH, T, K, L, D, dtype, backward)
    return Case(name + (" fwd+bwd" if backward else " fwd"), dtype, run, work)


def attention_work(B, NH, T, K, L, D, dtype: str, backward: bool) -> dict[str, Work]:
    """Flash-attention minimum: q, k, v, out (and do, dq, dk, dv) once, 2 FLOPs per multiply-add of each dot."""
    size = _size(dtype)
    rows, keys = B * NH * T * D, B * NH * K * L * D
    pairs = B * NH * T * K * L * D  # (row, key, dim) triples: one multiply-add per dot
    tensor = dtype in HALF_DTYPES
    forward = Work((rows + 2 * keys) * size + B * K * L + rows * size + B * NH * T * (2 * K + 2) * 4, 4 * pairs, tensor)
    work = {"_fid_attention_fwd_kernel": forward}
    if backward:
        stats = B * NH * T * 3 * 4  # row max, row sum, δ
        work["_fid_attention_bwd_dkdv_kernel"] = Work((2 * rows + 4 * keys) * size + stats, 8 * pairs, tensor)
        work["_fid_attention_bwd_dq_kernel"] = Work((3 * rows + 2 * keys) * size + stats, 6 * pairs, tensor)
    return work


def _dropout_mask_case() -> Case:
    from atlas_fast.kernels.attention import dropout_keep_scale

    shape = (1, 8, 32, 40 * 256)
    elements = shape[0] * shape[1] * shape[2] * shape[3]
    return Case(
        "attention dropout mask replay B=1 NH=8 T=32 K·L=10240",
        "fp32",
        lambda: dropout_keep_scale(shape, 0.1, 1, "cpu"),
        {"_dropout_mask_kernel": Work(elements * 4)},
    )


def attention_cases() -> list[Case]:
    # The benchmarks' grid: B ∈ {1, 4}, NH ∈ {8, 32}, T ∈ {16, 32}, K ∈ {40, 100}, L ∈ {256, 512}, Dh = 64;
    # block sizes depend on T, L and Dh only, so these classes cover it. Dh = 32 is the MiniLM reader's.
    cases = []
    for dtype in DTYPES:
        for dropout in (0.0, 0.1):
            cases.append(_attention_case(4, 8, 32, 40, 256, 64, dtype, "vnorm", dropout, backward=True))
        cases.append(_attention_case(4, 8, 32, 40, 256, 64, dtype, "prob", 0.0, backward=False))
    for T, L, D in ((16, 256, 64), (128, 512, 64), (32, 64, 32), (32, 256, 128)):
        cases.append(_attention_case(1, 8, T, 40, L, D, "bf16", "vnorm", 0.0, backward=True))
    cases.append(_dropout_mask_case())
    return cases


# ---------------------------------------------------------------------------- index top-k


def _index_topk_case(n_queries: int, n_rows: int, dim: int, k: int, dtype: str) -> Case:
    from atlas_fast.kernels.index_topk import search_triton

    def run():
        queries = torch.randn(n_queries, dim)
        rows = torch.empty(n_rows, dim, dtype=DTYPES[dtype])
        search_triton(queries, rows, torch.arange(n_rows), k)

    name = f"index_topk q={n_queries} N={n_rows} d={dim} k={k} {dtype}"
    return Case(name, dtype, run, index_topk_work(n_queries, n_rows, dim, dtype))


def index_topk_work(n_queries: int, n_rows: int, dim: int, dtype: str) -> dict[str, Work]:
    """Every row (and its id) read once, every score computed once; the top-k output is negligible."""
    work = Work(
        n_rows * (dim * _size(dtype) + 8) + n_queries * dim * 4,
        2 * n_queries * n_rows * dim,
        tensor_cores=dtype in HALF_DTYPES,
    )
    return {"_score_topk_kernel": work}


def index_topk_cases() -> list[Case]:
    cases = [_index_topk_case(q, 1_000_000, 768, 100, dtype) for dtype in DTYPES for q in (1, 64, 512)]
    cases += [_index_topk_case(64, 4_000_000, 768, 100, "fp16")]
    cases += [_index_topk_case(64, 1_000_000, 768, k, "fp16") for k in (16, SEARCH_MAX_K)]
    return cases


def all_cases() -> list[Case]:
    return kldivloss_cases() + emdr_loss_cases() + gold_scores_cases() + attention_cases() + index_topk_cases()
