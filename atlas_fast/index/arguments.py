"""The argument checks and constants every index shares (DocumentIndex, TorchDocumentIndex, ShardedIndex).

Each check converts what it accepts to one canonical form and refuses the rest with a ValueError that
names the argument and what was expected, before the index changes.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CHUNK_ROWS",
    "DTYPES",
    "STALE_ORDERS",
    "as_ids",
    "as_integer_array",
    "as_k",
    "as_matrix",
    "as_step",
    "beyond_range",
    "stale_arguments",
    "transform_arguments",
]

DTYPES = ("float32", "float16", "bfloat16", "int8")  # row storage (int8: the host DocumentIndex only)
STALE_ORDERS = ("oldest", "hot")  # the orders stale_ids can take
CHUNK_ROWS = 65536  # rows per chunk when copying, saving or loading: bounded extra memory


def as_integer_array(name: str, ids) -> np.ndarray:
    """Any-shape integer ids as int64; floats, and values that do not fit an int64, are refused (no wrap-around)."""
    array = np.asarray(ids.detach().cpu() if hasattr(ids, "detach") else ids)
    if not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(f"{name} must hold integers; got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64; got {int(array.max())}")
    return np.ascontiguousarray(array, dtype=np.int64)


def as_ids(name: str, ids) -> np.ndarray:
    """(n,) int64 ids, from numpy, a list or a torch tensor; other shapes are refused."""
    array = as_integer_array(name, ids)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D integer array; got shape {array.shape}")
    return array


def as_k(k) -> int:
    """Results per query: a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)


def as_step(step, name: str = "step") -> int:
    """A training step: an integer in [0, 2³¹) (1.7 is refused, not stored as 1)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**31:
        raise ValueError(f"{name} must be an integer in [0, 2**31); got {step!r}")
    return int(step)


def as_matrix(name: str, values, dim: int, check_finite: bool = True) -> np.ndarray:
    """(n, dim) contiguous float32 from any float array or CPU tensor; NaN and inf refused when ``check_finite``,
    and finite values that float32 cannot hold (a float64 1e300) always."""
    if hasattr(values, "detach") and not values.is_floating_point():  # as numpy: integer vectors are refused
        raise ValueError(f"{name} must hold floats; got dtype {values.dtype}")
    array = np.asarray(values.detach().cpu().float() if hasattr(values, "detach") else values)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}); got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must hold floats; got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # refused below, with a message
        converted = np.ascontiguousarray(array, dtype=np.float32)
    # A float64 1e300 is finite, but not as float32. Without check_finite, the caller (the C++ core) refuses
    # the NaN or inf the input itself holds.
    if (check_finite or converted is not array) and not np.isfinite(converted).all():
        if np.isfinite(array).all():
            raise ValueError(beyond_range(name, "float32"))
        if check_finite:
            raise ValueError(f"{name} contains NaN or infinite values")
    return converted


def beyond_range(name: str, dtype: str) -> str:
    """The message refusing values that ``dtype`` would store as infinite (the C++ core's words too)."""
    scale = "scale them down" + (" or store float32" if dtype != "float32" else "")
    return f"{name} holds values beyond {dtype}'s range (they would be stored as infinite): {scale}"


def transform_arguments(matrix, older_than, normalize, dim: int) -> tuple[np.ndarray, int, bool]:
    """`Index.transform`'s arguments checked: a (dim, dim) finite float32 matrix, a step, a bool."""
    shape = getattr(matrix, "shape", None) or np.shape(matrix)
    if tuple(shape) != (dim, dim):
        raise ValueError(f"matrix must have shape ({dim}, {dim}); got {tuple(shape)}")
    if not isinstance(normalize, (bool, np.bool_)):
        raise ValueError(f"normalize must be a bool; got {normalize!r}")
    return as_matrix("matrix", matrix, dim), as_step(older_than, "older_than"), bool(normalize)


def stale_arguments(budget, policy: str) -> tuple[int, str]:
    """`Index.stale_ids`'s arguments checked: a budget ≥ 0 and one of STALE_ORDERS."""
    if policy not in STALE_ORDERS:
        raise ValueError(f"policy must be one of {', '.join(STALE_ORDERS)}; got {policy!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"budget must be an integer ≥ 0; got {budget!r}")
    return int(budget), policy
