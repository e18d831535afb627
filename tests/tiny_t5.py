"""A tiny randomly initialised Hugging Face T5 and FiD-shaped inputs, shared by the reader-side tests."""

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

B, K, L, T, VOCAB = 2, 3, 6, 4, 61


def tiny_t5(tie_word_embeddings=True, dropout_rate=0.0):
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=dropout_rate,
        decoder_start_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    return T5ForConditionalGeneration(config)


def fid_inputs(model):
    """Encode the B·K passages separately, then concatenate each example's K passages: FiD.

    Returns encoder outputs (B, K·L, H), their mask (B, K·L) with a partly and an almost
    fully padded passage, and labels (B, T) with padding.
    """
    torch.manual_seed(1)
    passages = torch.randint(1, VOCAB, (B * K, L))
    mask = torch.ones(B * K, L, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    with torch.no_grad():
        states = model.encoder(input_ids=passages, attention_mask=mask).last_hidden_state
    encoder_outputs = BaseModelOutput(last_hidden_state=states.reshape(B, K * L, -1))
    labels = torch.randint(1, VOCAB, (B, T))
    labels[1, -1] = -100
    return encoder_outputs, mask.reshape(B, K * L), labels
