"""Pure-PyTorch references: the CPU fallback, the test oracle and the benchmark baseline."""

from atlas_fast.reference.losses import emdr_loss_ref, kldivloss_ref, retriever_scores_ref

__all__ = ["emdr_loss_ref", "kldivloss_ref", "retriever_scores_ref"]
