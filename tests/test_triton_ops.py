"""On a CUDA machine the ops are triton_ops: torch.compile must see their Triton kernels, and each kernel may
write only its outputs (Inductor copies every argument a kernel might write before launching it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# op -> kernel -> the arguments torch's TTIR analysis finds written: the outputs (and the forward's scratch
# max_ptr), never an input.
EXPECTED = {
    "kldivloss": {"_kldiv_fwd_kernel": ["grad_ptr", "loss_ptr"]},
    "kldivloss_backward": {"_kldiv_bwd_pointwise_kernel": ["grad_ptr"]},
    "emdr_loss": {"_emdr_fwd_kernel": ["grad_ptr", "loss_ptr"]},
    "token_logprobs": {"_token_logprobs_kernel": ["out_ptr"]},
    "fid_cross_attention": {
        "_fid_attention_fwd_kernel": ["mass_ptr", "max_ptr", "out_ptr", "row_max_ptr", "row_sum_ptr"]
    },
    "fid_cross_attention_backward": {
        "_fid_attention_bwd_dkdv_kernel": ["grad_k_ptr", "grad_v_ptr"],
        "_fid_attention_bwd_dq_kernel": ["grad_q_ptr"],
    },
    "index_topk": {"_score_topk_kernel": ["out_ptr"]},
}


def test_compile_sees_each_ops_kernels_and_they_write_only_outputs():
    script = Path(__file__).with_name("trace_triton_ops.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == EXPECTED
