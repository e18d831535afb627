"""A projection, not a measurement: per-rank bytes of model state for Atlas's readers under DDP and under FSDP.

    python benchmarks/memory_projection.py            # prints the markdown table of docs/memory.md

The models are built on the meta device (no weights, nothing downloaded) from the configurations of
Atlas's readers, T5 v1.1 LM-adapted (base, large, xl, xxl), and of its retriever, Contriever
(BERT-base). Parameters are counted, not quoted.

Model state per rank, in bytes, for P parameters trained with AdamW in fp32 (bf16 autocast keeps
fp32 master weights):
- DDP: every rank holds everything, 16·P: parameters 4·P, gradients 4·P, AdamW's two moments 8·P.
- FSDP (fully_shard per transformer block, MixedPrecisionPolicy bf16 parameters and fp32 reduction):
  16·P / W for the sharded state, plus what is unsharded at one time in bf16: the root's parameters
  (embeddings, LM head, final norms), which stay gathered for the whole step, and two blocks (the one
  running and the one prefetched), each with its gradient during backward.
Activations are not included: they depend on batch, K passages, lengths and gradient checkpointing.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

GIB = 1024**3
GPU_BYTES = 80 * 10**9  # one 80 GB GPU (A100/H100 80GB)
WORLD_SIZES = (1, 8, 64)

# T5 v1.1 LM-adapted (google/t5-*-lm-adapt), the readers of Atlas: d_model, d_ff, layers, heads.
READERS = {
    "T5-base": (768, 2048, 12, 12),
    "T5-large": (1024, 2816, 24, 16),
    "T5-XL": (2048, 5120, 24, 32),
    "T5-XXL": (4096, 10240, 24, 64),
}


def _reader(d_model: int, d_ff: int, layers: int, heads: int) -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=32128,
        d_model=d_model,
        d_kv=64,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
    )
    config.tie_word_embeddings = False  # v1.1 has its own LM head (transformers 5 ignores it as an argument)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    # Encoder and decoder read the one shared embedding matrix (transformers 5 ties it only when it loads).
    model.encoder.embed_tokens.weight = model.decoder.embed_tokens.weight = model.shared.weight
    return model


def _retriever() -> nn.Module:
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        return BertModel(BertConfig(), add_pooling_layer=False)  # Contriever: BERT-base, mean pooling


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks fully_shard wraps one by one (T5's encoder and decoder blocks, BERT's layers)."""
    if hasattr(model, "encoder") and hasattr(model.encoder, "block"):
        return [*model.encoder.block, *model.decoder.block]
    return list(model.encoder.layer)


def project(reader: nn.Module, retriever: nn.Module, world_size: int) -> dict[str, float]:
    """Per-rank GiB of model state under DDP and FSDP at ``world_size`` (see the module docstring)."""
    total = _count(reader) + _count(retriever)
    ddp = 16 * total
    root = total - sum(_count(block) for model in (reader, retriever) for block in _blocks(model))
    largest_block = max(_count(block) for model in (reader, retriever) for block in _blocks(model))
    unsharded = 2 * root + 2 * (2 * largest_block) * 2  # bf16 root; two bf16 blocks with their bf16 gradients
    fsdp = 16 * total / world_size + unsharded
    return {"parameters": total, "ddp": ddp / GIB, "fsdp": fsdp / GIB}


def _gib_cell(gib: float) -> str:
    """ "44.1", or "167.6 ✗" where it is over one 80 GB GPU."""
    return f"{gib:.1f}" + ("" if gib * GIB <= GPU_BYTES else " ✗")


def table() -> str:
    retriever = _retriever()
    lines = [
        "| reader (+ Contriever) | parameters | DDP, any W | FSDP W=1 | FSDP W=8 | FSDP W=64 |",
        "|---|---|---|---|---|---|",
    ]
    for name, dims in READERS.items():
        reader = _reader(*dims)
        cells = [project(reader, retriever, w) for w in WORLD_SIZES]
        lines.append(
            f"| {name} | {cells[0]['parameters'] / 1e9:.2f} B | {_gib_cell(cells[0]['ddp'])} | "
            + " | ".join(_gib_cell(cell["fsdp"]) for cell in cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print("Per-rank model state in GiB (parameters, gradients, AdamW), a projection; ✗: over one 80 GB GPU")
    print("before any activation.\n")
    print(table())


if __name__ == "__main__":
    main()
