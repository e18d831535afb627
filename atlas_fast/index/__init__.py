"""Document index: exact search, incremental updates and sharding."""

from atlas_fast.index.merge import merge_topk

__all__ = ["merge_topk"]
