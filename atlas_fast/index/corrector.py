"""Drift correctors: a linear map from old to new document embeddings, fitted on the documents re-embedded
this step and applied in place to the rows of older encoder versions (`Index.transform`).

Each refresh step re-embeds some documents; their stored (old) and fresh (new) vectors are
pairs X (n, d) -> Y (n, d). Where the document encoder's drift is close to linear, the map that
carries X to Y also carries the rows that were not re-embedded most of the way, at the cost of
one (N, d) x (d, d) product instead of N encoder passes (the idea of correcting stale embeddings
rather than recomputing them: ANCE's asynchronous refresh, "corrector networks", ICML 2024).

- "scale": one factor s = ⟨X, Y⟩ / ⟨X, X⟩ for every row (M = s·I), the least-squares fit of a uniform
  rescaling. The joint PDist steps shrink every embedding while turning it little, so re-embedded rows
  score below every stale one and drop out of the top-k (docs/experiments/refresh.md, the diagnosis); one
  factor, fitted on any number of pairs, puts the versions back on one scale;
- "procrustes": the orthogonal M maximising tr(Mᵀ(XᵀY + λI)) (M = U Vᵀ from its SVD): the rotation
  that best carries X to Y, pulled towards the identity by λ = ``ridge`` · mean(diag XᵀX). It rotates,
  never rescales. The identity term matters: with fewer pairs than dimensions XᵀY has no rank in
  the directions the pairs do not span, and plain Procrustes rotates those arbitrarily, which wrecks
  retrieval (docs/experiments/refresh.md);
- "linear": least squares towards the identity, M = I + (XᵀX + λI)⁻¹ Xᵀ(Y − X), ridge λ = ``ridge`` ·
  mean(diag XᵀX); with fewer pairs than dimensions it stays near I where the pairs say nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CORRECTORS", "CORRECTOR_FITS", "fit_map", "map_from_moments"]

CORRECTORS = ("none", "scale", "procrustes", "linear")
CORRECTOR_FITS = ("step", "accumulated")  # the pairs a corrector is fitted on: this step's, or all so far


def fit_map(old: np.ndarray, new: np.ndarray, kind: str, ridge: float = 1.0) -> np.ndarray:
    """The (d, d) float32 map M of kind ``kind`` with old @ M ≈ new.

    Args:
        old, new: (n, d) the stored and the fresh embeddings of the same n documents, n ≥ 1.
        kind: "scale", "procrustes" or "linear".
        ridge: the pull towards the identity of "linear" and "procrustes", relative to mean(diag oldᵀold).
    """
    old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if old.ndim != 2 or old.shape != new.shape or old.shape[0] == 0:
        raise ValueError(f"old and new must be (n, d) arrays of one shape with n ≥ 1; got {old.shape}, {new.shape}")
    if not (np.isfinite(old).all() and np.isfinite(new).all()):
        raise ValueError("old and new must be finite")
    return map_from_moments(old.T @ old, old.T @ new, kind, ridge)


def map_from_moments(gram: np.ndarray, cross: np.ndarray, kind: str, ridge: float = 1.0) -> np.ndarray:
    """`fit_map` from the pairs' moments alone: gram = oldᵀold and cross = oldᵀnew, each (d, d).

    Every fit here is a function of these two sums, so pairs of many steps can be pooled in O(d²) memory
    by adding their moments (`RefreshPolicy`'s ``corrector_fit = "accumulated"``).
    """
    gram, cross = np.asarray(gram, dtype=np.float64), np.asarray(cross, dtype=np.float64)
    d = gram.shape[0]
    if kind == "scale":
        return (np.trace(cross) / max(np.trace(gram), np.finfo(np.float64).tiny) * np.eye(d)).astype(np.float32)
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number ≥ 0; got {ridge!r}")
    if ridge == 0 and np.linalg.matrix_rank(gram) < d:  # rank < d: the map is arbitrary where the pairs say nothing
        raise ValueError(
            f"ridge 0 with pairs of rank {np.linalg.matrix_rank(gram)} < d = {d} leaves the {kind} fit "
            "underdetermined; use a ridge > 0"
        )
    strength = ridge * max(float(np.trace(gram)) / d, np.finfo(np.float64).tiny)
    if kind == "procrustes":
        u, _, vt = np.linalg.svd(cross + strength * np.eye(d))
        return (u @ vt).astype(np.float32)
    if kind == "linear":
        delta = np.linalg.solve(gram + strength * np.eye(d), cross - gram)
        return (np.eye(d) + delta).astype(np.float32)
    raise ValueError(f"kind must be one of {', '.join(CORRECTORS[1:])}; got {kind!r}")
