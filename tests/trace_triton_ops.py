"""Prints, as JSON, the Triton kernels torch.compile sees inside each atlas_fast op when the ops are triton_ops.

Run by tests/test_triton_ops.py in a fresh interpreter: atlas_fast.ops registers triton_ops only where CUDA is
available, so this script makes torch report CUDA while atlas_fast.ops is imported, then traces every op with
AOTAutograd on fake CPU tensors. Triton's driver is the compile gate's compile-only stub (an H100 target):
tracing launches nothing, but torch's analysis of which kernel arguments are written compiles each kernel to
TTIR. Output: {op: {kernel: [the arguments torch must treat as written]}}.
"""

import contextlib
import json

import torch
from functorch.compile import aot_function
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

available = torch.cuda.is_available
torch.cuda.is_available = lambda: True
import atlas_fast.ops  # noqa: E402, F401  (after the patch: the registration reads it)

torch.cuda.is_available = available

from atlas_fast.compile_gate.driver import TARGETS, compile_only  # noqa: E402


class _Traced(Exception):
    """Raised instead of running the traced graph, which would launch kernels on a machine without a GPU."""


def traced_kernels(fn, *args) -> dict[str, list[str]]:
    graphs = []

    def stop(graph_module, _example_inputs):
        graphs.append(graph_module)

        def run(*_):
            raise _Traced

        return run

    with compile_only(TARGETS[90]), contextlib.suppress(_Traced):
        aot_function(fn, fw_compiler=stop)(*args)
    kernels = {}
    for node in graphs[0].graph.nodes:
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            name = kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__
            kernels[name] = sorted(node.kwargs["tensors_to_clone"])
    return kernels


def main() -> None:
    aten = torch.ops.atlas_fast
    B, K, T, V, H = 3, 8, 5, 96, 32
    scores, gold = torch.randn(B, K), torch.randn(B, K)
    labels = torch.randint(0, V, (B, T))
    NH, L, D = 2, 16, 16
    q, kv = torch.randn(B, NH, T, D, dtype=torch.float16), torch.randn(B, NH, K * L, D, dtype=torch.float16)
    mask = torch.ones(B, K * L, dtype=torch.bool)
    seed = torch.tensor(3)
    out, _, row_max, row_sum = torch.empty_like(q), None, torch.empty(B, NH, T), torch.empty(B, NH, T)
    calls = {
        "kldivloss": (aten.kldivloss, scores, gold, 0.1, 0.1, None, "mean", True),
        "kldivloss_backward": (aten.kldivloss_backward, torch.randn(B, K), scores, gold, 0.1, 0.1, None),
        "emdr_loss": (aten.emdr_loss, scores, torch.randn(B, K, T), labels, 0.1, None, True),
        "token_logprobs": (aten.token_logprobs, torch.randn(B * T, H), torch.randn(V, H), labels.flatten(), 1.0),
        "fid_cross_attention": (aten.fid_cross_attention, q, kv, kv, mask, K, 0.25, "vnorm", 0.1, seed),
        "fid_cross_attention_backward": (
            aten.fid_cross_attention_backward, q, q, kv, kv, mask, out, row_max, row_sum, 0.25, 0.1, seed,
        ),
        "index_topk": (aten.index_topk, torch.randn(4, H), torch.randn(V, H), torch.arange(V), 10),
    }  # fmt: skip
    print(json.dumps({name: traced_kernels(op, *args) for name, (op, *args) in calls.items()}))


if __name__ == "__main__":
    main()
