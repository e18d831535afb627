"""EM and F1 with SQuAD normalisation; retrieval hits by gold passage or by answer containment."""

import numpy as np
import pytest

from atlas_fast.data.formats import Example, Passage
from atlas_fast.data.normalize import normalize_answer
from atlas_fast.train.metrics import exact_match, f1_score, passage_hits, recall_at


def test_squad_normalisation():
    assert normalize_answer("  The Beatles!  ") == "beatles"
    assert normalize_answer("An   apple, a pear") == "apple pear"


def test_exact_match_and_f1():
    assert exact_match("the Eiffel Tower", ["Eiffel tower.", "Paris"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert f1_score("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1_score("nothing", ["Eiffel Tower"]) == 0.0


def test_hits_use_the_gold_passage_when_known_else_answer_containment():
    passages = [Passage("1", "Vienna", "Capital of Austria."), Passage("2", "Austria", "Its capital is Vienna.")]
    examples = [Example("capital?", ("Vienna",), passage_id="1"), Example("capital?", ("vienna",))]
    hits = passage_hits(examples, [passages[::-1], passages[::-1]], {})
    np.testing.assert_array_equal(hits, [[False, True], [True, True]])
    assert recall_at(hits, 1) == 0.5 and recall_at(hits, 2) == 1.0
