"""The two models of Atlas: a bi-encoder retriever and a Fusion-in-Decoder reader."""

from atlas_fast.models.reader import FiDReader
from atlas_fast.models.retriever import Retriever, packaged_minilm_path

__all__ = ["FiDReader", "Retriever", "packaged_minilm_path"]
