"""What each incremental-refresh remedy costs per step, measured per row at d = 768 on this machine.

    python benchmarks/refresh_remedy_costs.py     # prints JSON; docs/experiments/refresh.md projects it to 21M rows

- the linear corrector's fit per step, on this step's 100 pairs or accumulated (`RefreshPolicy.after_step` on
  an index of 200 rows, so that applying the map costs nothing next to the fit);
- applying a d x d map, or the refresh-ceiling's MLP corrector, to rows (rows per second);
- the MLP corrector's fit on 2,500 pairs; a query-side adapter (one d x d product) per query.
"""

import json
import time

import numpy as np
import torch

from atlas_fast.experiments.refresh_ceiling import fit_mlp_corrector
from atlas_fast.index import DocumentIndex
from atlas_fast.index.refresh import RefreshPolicy

DIM, BUDGET = 768, 100


def _seconds(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _fit_seconds(corrector_fit: str) -> float:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2 * BUDGET, DIM)).astype(np.float32)
    drift = np.eye(DIM, dtype=np.float32) + 0.01 * rng.standard_normal((DIM, DIM)).astype(np.float32)
    index = DocumentIndex(DIM)
    index.upsert(np.arange(2 * BUDGET), base)
    policy = RefreshPolicy(
        "incremental",
        index,
        lambda ids: base[ids] @ drift,
        lambda: np.arange(2 * BUDGET),
        budget=BUDGET,
        corrector="linear",
        corrector_fit=corrector_fit,
    )
    steps = iter(range(1, 10**6))
    return _seconds(lambda: policy.after_step(next(steps)))


def main() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((100_000, DIM)).astype(np.float32)
    pairs = rng.standard_normal((2_500, DIM)).astype(np.float32)
    matrix = torch.from_numpy(rng.standard_normal((DIM, DIM)).astype(np.float32))
    start = time.perf_counter()
    mlp = fit_mlp_corrector(pairs, pairs + 0.1, seed=0)
    mlp_fit = time.perf_counter() - start
    queries = torch.from_numpy(rows[:64])
    result = {
        "dim": DIM,
        "threads": torch.get_num_threads(),
        "linear_fit_step_s": _fit_seconds("step"),
        "linear_fit_accumulated_s": _fit_seconds("accumulated"),
        "linear_apply_rows_per_s": len(rows) / _seconds(lambda: torch.from_numpy(rows) @ matrix, 3),
        "mlp_fit_2500_pairs_s": mlp_fit,
        "mlp_apply_rows_per_s": len(rows) / _seconds(lambda: mlp(rows), 3),
        "adapter_per_query_s": _seconds(lambda: queries @ matrix, 100) / len(queries),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
