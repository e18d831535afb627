"""The compile gate: every Triton kernel compiles for sm_80 and sm_90 without spills, within shared memory,
with fp16/bf16 dots on tensor cores (no GPU needed), and the gate catches kernels that do not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_fast.compile_gate.cases import all_cases
from atlas_fast.compile_gate.coverage import bare_launches, launchable_kernels
from atlas_fast.compile_gate.inspect import Dot, KernelStats, dots_of, problems

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")


def _compiler_env() -> dict[str, str]:
    """The environment without TRITON_INTERPRET, which would replace the compiler by the interpreter."""
    return {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}


def _stats(**overrides) -> KernelStats:
    fields = dict(
        kernel="k", num_warps=4, num_stages=3, registers=100, stack_bytes=0, local_bytes=0,
        shared_bytes=1024, tensor_core_instructions=8, dots=(Dot("f16", "tf32", True),),
    )  # fmt: skip
    fields.update(overrides)
    return KernelStats(**fields)


def test_every_launched_kernel_has_a_case():
    """A new kernel in atlas_fast/kernels/ fails here until compile_gate/cases.py launches it."""
    found = launchable_kernels()
    assert {"_kldiv_fwd_kernel", "_score_topk_kernel", "_fid_attention_bwd_dq_kernel"} <= found
    covered = {kernel for case in all_cases() for kernel in case.work}
    assert found - covered == set()


def test_every_launch_goes_through_wrap_triton():
    """A bare ``kernel[grid](...)`` inside a triton_op is invisible to torch.compile's tracing."""
    assert bare_launches() == set()


def test_coverage_finds_a_new_kernel(tmp_path):
    (tmp_path / "new_op.py").write_text(
        "import triton\n\n@triton.jit\ndef _helper(x):\n    return x\n\n"
        "@triton.jit\ndef _new_kernel(x_ptr):\n    pass\n\ndef launch(x):\n    _new_kernel[(1,)](x)\n"
    )
    assert launchable_kernels(tmp_path) == bare_launches(tmp_path) == {"_new_kernel"}
    (tmp_path / "new_op.py").write_text(
        "import triton\nfrom torch.library import wrap_triton\n\n@triton.jit\ndef _new_kernel(x_ptr):\n    pass\n\n"
        "def launch(x):\n    wrap_triton(_new_kernel)[(1,)](x)\n"
    )
    assert launchable_kernels(tmp_path) == {"_new_kernel"} and bare_launches(tmp_path) == set()


def test_problems_accepts_a_clean_half_kernel():
    assert problems(_stats(), "fp16", 166_912) == []


@pytest.mark.parametrize(
    ("overrides", "dtype", "message"),
    [
        ({"stack_bytes": 8}, "fp16", "spills: 8 B stack frame"),
        ({"shared_bytes": 200_000}, "bf16", "over the 166912 B per-block limit"),
        ({"dots": (Dot("f32", "ieee", False),)}, "fp16", "takes f32 operands in a fp16 kernel"),
        ({"dots": (Dot("bf16", "tf32", False),)}, "bf16", "(bf16) is not on tensor cores"),
        ({"tensor_core_instructions": 0}, "fp16", "no HMMA/HGMMA instruction"),
        ({"dots": (Dot("f32", "tf32", True),)}, "fp32", "rounds fp32 operands (tf32)"),
    ],
)
def test_problems_names_each_defect(overrides, dtype, message):
    (found,) = problems(_stats(**overrides), dtype, 166_912)
    assert message in found


def test_dots_of_reads_operand_precision_and_layout():
    ttgir = (
        "#blocked = #ttg.blocked<{sizePerThread = [1, 4]}>\n"
        "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0}>\n"
        "%4 = tt.dot %a, %b, %c : tensor<32x32xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked}>> * "
        "tensor<32x32xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked}>> -> tensor<32x32xf32, #blocked> loc(#loc)\n"
        "%5 = tt.dot %d, %e, %f, inputPrecision = tf32 : tensor<64x16xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, "
        "kWidth = 2}>> * tensor<16x64xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma}>> -> tensor<64x64xf32, #mma>\n"
    )
    assert dots_of(ttgir) == (Dot("f32", "ieee", False), Dot("bf16", "tf32", True))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_gate_rejects_real_bad_kernels(arch):
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "compile_gate_bad_kernels.py"), str(arch)],
        env=_compiler_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert any("takes f32 operands in a fp16 kernel" in p for p in found["_upcast_dot_kernel"])
    assert any(p.startswith("spills:") for p in found["_spilling_kernel"])


@pytest.mark.slow
def test_every_kernel_compiles_clean_for_sm80_and_sm90(tmp_path):
    """The gate itself: every case of cases.py for both targets; its exit status is the verdict."""
    output = tmp_path / "gate.json"
    result = subprocess.run(
        [sys.executable, "-m", "atlas_fast.compile_gate", "--json", str(output)],
        env=_compiler_env(), capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    rows = json.loads(output.read_text())
    assert {row["arch"] for row in rows} == {80, 90}
    for arch in (80, 90):
        kernels = {row["kernel"] for row in rows if row["arch"] == arch}
        assert kernels == launchable_kernels()
        queries = {row["case"].split()[1] for row in rows if row["arch"] == arch and row["case"].startswith("index")}
        assert {"q=1", "q=64", "q=512"} <= queries
    half = [row for row in rows if row["dtype"] in ("fp16", "bf16") and row["dots"] != "—"]
    assert half and all(row["tensor_core_instructions"] > 0 for row in half)
