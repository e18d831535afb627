"""How fast DocumentIndex search reads its rows, against torch's sum over 1 GiB, interleaved in one process.

This VM's memory bandwidth moves from minute to minute, so a search's GB/s means little beside a limit
measured at another time. Each round here measures the sum, then bf16 and int8 search at 1 and 8 queries
(N = 1M rows of d = 768, k = 100), the best of 5 each, one right after the other:

    python benchmarks/search_stream_rate.py [rounds]
"""

import functools
import sys

import numpy as np
import torch
from harness import best_seconds

from atlas_fast import _ext
from atlas_fast.index import DocumentIndex

N, DIM, K, CHUNK = 1_000_000, 768, 100, 100_000


def main(rounds: int) -> None:
    rng = np.random.default_rng(0)
    indexes = {dtype: DocumentIndex(DIM, dtype) for dtype in ("bfloat16", "int8")}
    for start in range(0, N, CHUNK):
        rows = rng.standard_normal((CHUNK, DIM), dtype=np.float32)
        for index in indexes.values():
            index.upsert(np.arange(start, start + CHUNK), rows)
    memory = torch.ones(2**28, dtype=torch.float32)
    queries = {batch: rng.standard_normal((batch, DIM), dtype=np.float32) for batch in (1, 8)}
    for _ in range(rounds):
        cells = [f"sum {memory.numel() * 4 / best_seconds(memory.sum, 5) / 1e9:.1f}"]
        for dtype, index in indexes.items():
            row_bytes = _ext.native().row_bytes(dtype, DIM)
            for batch, batch_queries in queries.items():
                seconds = best_seconds(functools.partial(index.search, batch_queries, K), 5)
                cells.append(f"{dtype} {batch}q {N * row_bytes / seconds / 1e9:.1f}")
        print(", ".join(cells), "GB/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
