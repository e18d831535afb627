"""Retriever (mean pooling, tied/untied, query-side only) and FiD reader (T5 and BERT encoder-decoder)."""

import pytest
import torch
import torch.nn.functional as F

from atlas_fast.data.formats import Passage
from atlas_fast.models import FiDReader, Retriever
from atlas_fast.models.modes import eval_mode
from atlas_fast.testing.tiny import write_tiny_bert, write_tiny_t5

PASSAGES = [
    [
        Passage("1", "Vienna", "Vienna is the capital of Austria."),
        Passage("2", "Graz", "Graz lies in Styria, far away."),
    ],
    [Passage("3", "Linz", "Linz is on the Danube."), Passage("4", "Salzburg", "Salzburg: Mozart's birthplace.")],
]
QUERIES = ["capital of Austria?", "city on the Danube?"]
ANSWERS = ["Vienna", "Linz on the Danube"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


def _t5_reader(t5_dir):
    return FiDReader.from_t5(t5_dir, passage_max_length=40).eval()


def _bert_reader(bert_dir, share_encoder_embeddings=False):
    torch.manual_seed(0)
    return FiDReader.from_bert_encoder(
        bert_dir, passage_max_length=24, share_encoder_embeddings=share_encoder_embeddings
    ).eval()


@pytest.fixture(params=["t5", "bert", "bert-shared-embeddings"])
def reader(request, bert_dir, t5_dir):
    if request.param == "t5":
        return _t5_reader(t5_dir)
    return _bert_reader(bert_dir, share_encoder_embeddings=request.param == "bert-shared-embeddings")


def test_retriever_mean_pools_real_tokens_only(bert_dir):
    retriever = Retriever.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        alone = retriever.embed_passages(["a short text"])
        padded = retriever.embed_passages(["a short text", "a much longer text that forces padding of the first"])
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-6)


def test_untied_encoders_have_their_own_weights_and_query_side_only_freezes_passages(bert_dir):
    tied = Retriever.from_pretrained(bert_dir)
    assert tied.passage_encoder is tied.query_encoder
    untied = Retriever.from_pretrained(bert_dir, untied=True, train_passage_encoder=False)
    query_weights = {p.data_ptr() for p in untied.query_encoder.parameters()}
    assert query_weights.isdisjoint(p.data_ptr() for p in untied.passage_encoder.parameters())
    untied.embed_queries(["q"]).sum().backward()
    assert all(not p.requires_grad for p in untied.passage_encoder.parameters())
    assert all(p.grad is not None for name, p in untied.query_encoder.named_parameters() if "pooler" not in name)
    with pytest.raises(ValueError, match="needs untied=True"):
        Retriever.from_pretrained(bert_dir, train_passage_encoder=False)


def test_fid_reader_matches_eager_attention(bert_dir, reader):
    input_ids, mask = reader.tokenize_passages(QUERIES, PASSAGES)
    labels = reader.tokenize_targets(ANSWERS)
    with torch.no_grad():
        states, flat_mask = reader.encode(input_ids, mask)
        fid_loss = reader.loss(states, flat_mask, labels, 2)
        reader.fid.unpatch()
        logits = reader.model(
            encoder_outputs=(states,), attention_mask=flat_mask, decoder_input_ids=reader.shift_labels(labels)
        ).logits
    torch.testing.assert_close(fid_loss, F.cross_entropy(logits.flatten(0, 1), labels.flatten()), rtol=1e-5, atol=1e-6)


def test_lm_head_features_reproduce_the_logits(reader):
    hidden = torch.randn(2, 3, reader.model.config.decoder.hidden_size if not reader.is_t5 else 32)
    features, weight = reader.lm_head_features(hidden)
    torch.testing.assert_close(features @ weight.T, reader.logits(hidden), rtol=1e-5, atol=1e-5)


def test_pdist_gold_scores_are_each_passage_alone(reader):
    input_ids, mask = reader.tokenize_passages(QUERIES, PASSAGES)
    labels = reader.tokenize_targets(ANSWERS)
    states, flat_mask = reader.encode(input_ids, mask)
    gold = reader.gold_scores("pdist", states, flat_mask, labels, 2)
    for b in range(2):
        for k in range(2):
            one_ids, one_mask = input_ids[b, k : k + 1], mask[b, k : k + 1]
            one_states = reader.model.encoder(input_ids=one_ids, attention_mask=one_mask).last_hidden_state
            hidden = reader.decoder_hidden(one_states, one_mask, reader.shift_labels(labels[b : b + 1]), 1)
            nll = F.cross_entropy(reader.logits(hidden)[0], labels[b], ignore_index=-100)
            torch.testing.assert_close(gold[b, k], -nll, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["adist", "loop", "emdr"])
def test_other_gold_modes_have_their_shapes(reader, mode):
    input_ids, mask = reader.tokenize_passages(QUERIES, PASSAGES)
    labels = reader.tokenize_targets(ANSWERS)
    states, flat_mask = reader.encode(input_ids, mask)
    settings = reader.fid.n_passages, reader.fid.collect_mass
    gold = reader.gold_scores(mode, states, flat_mask, labels, 2)
    assert (reader.fid.n_passages, reader.fid.collect_mass) == settings  # nothing is left mutated by the call
    if mode == "emdr":
        assert gold.shape == (2, 2, labels.shape[1])
        valid = (labels != -100)[:, None, :].expand_as(gold)
        # Log-probabilities of the real target tokens: finite and at most 0 (padded positions are masked later).
        assert torch.isfinite(gold[valid]).all() and (gold[valid] <= 0).all()
    else:
        assert gold.shape == (2, 2)
        assert torch.isfinite(gold).all()


def test_generate_returns_answers_without_template_tokens(reader):
    input_ids, mask = reader.tokenize_passages(QUERIES, PASSAGES)
    states, flat_mask = reader.encode(input_ids, mask)
    answers = reader.generate(states, flat_mask, 2)
    assert len(answers) == 2 and all(isinstance(a, str) and "<extra_id_0>" not in a for a in answers)


@pytest.mark.parametrize("train_encoder", [False, True])
def test_shared_embeddings_are_one_parameter_that_trains_only_with_the_encoder(bert_dir, train_encoder):
    reader = _bert_reader(bert_dir, share_encoder_embeddings=True).train()
    shared = reader.model.encoder.embeddings.word_embeddings.weight
    assert reader.model.decoder.bert.embeddings.word_embeddings.weight is shared
    assert reader.model.decoder.cls.predictions.decoder.weight is shared
    reader.model.tie_weights()  # Hugging Face's re-tie keeps the sharing
    assert reader.model.decoder.cls.predictions.decoder.weight is shared
    reader.model.encoder.requires_grad_(train_encoder)
    input_ids, mask = reader.tokenize_passages(QUERIES, PASSAGES)
    states, flat_mask = reader.encode(input_ids, mask)
    reader.loss(states, flat_mask, reader.tokenize_targets(ANSWERS), 2).backward()
    assert (shared.grad is not None) == train_encoder
    assert reader.model.decoder.cls.predictions.bias.grad is not None  # the head's own bias still trains


def test_shared_embeddings_survive_a_state_dict_round_trip(bert_dir):
    source = _bert_reader(bert_dir, share_encoder_embeddings=True)
    with torch.no_grad():
        source.model.encoder.embeddings.word_embeddings.weight.add_(1.0)
    target = _bert_reader(bert_dir, share_encoder_embeddings=True)
    target.load_state_dict(source.state_dict())
    shared = target.model.encoder.embeddings.word_embeddings.weight
    assert target.model.decoder.cls.predictions.decoder.weight is shared
    torch.testing.assert_close(shared, source.model.encoder.embeddings.word_embeddings.weight)


def test_eval_mode_restores_each_submodules_own_mode():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model[1].eval()  # a submodule kept in eval mode inside a training model (as a frozen encoder is)
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training
