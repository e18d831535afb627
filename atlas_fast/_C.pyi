"""Type stub of the private native module (csrc/)."""

import numpy as np
import numpy.typing as npt

def merge_topk(
    scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], k: int, n_threads: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def build_info() -> dict[str, object]: ...
