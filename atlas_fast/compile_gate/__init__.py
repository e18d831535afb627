"""The compile gate: every Triton kernel compiled for sm_80 and sm_90 without a GPU, and checked.

`python -m atlas_fast.compile_gate` compiles each launcher specialisation (cases.py)
through the triton wheel's ptxas with a compile-only driver (driver.py), reads
registers, stack, shared memory and tensor-core use from the artefacts
(inspect.py) and fails on a spill, a shared-memory overrun, an fp16/bf16 dot off
tensor cores or an uncovered kernel. `benchmarks/gpu_report.py` renders its rows,
with each case's roofline bound, into BENCHMARKS.md.
"""
