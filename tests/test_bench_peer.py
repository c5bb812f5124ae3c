"""The voice benchmark's rules that need no models: which answer counts, prompts spread over the corpus, chrF
and the English references of the Spanish prompts."""

from __future__ import annotations

from appliance.bench.corpus import transcripts
from appliance.bench.peer import MAX_S, MIN_S, answer_latency, spread_prompts
from appliance.bench.text import chrf


def test_the_answer_heard_is_the_one_after_the_last_barge_in_before_the_mark() -> None:
    assert round(answer_latency([10.3, 10.4], [], 10.0) or 0, 3) == 0.3
    # an answer to the turn's first words (9.2), cut by a barge-in (9.5) when the speaker went on
    assert round(answer_latency([9.2, 9.3, 10.25], [9.5], 10.0) or 0, 3) == 0.25
    # the whole answer began before the prompt's last quiet sounds ended: negative
    assert round(answer_latency([9.9, 10.1], [9.5], 10.0) or 0, 3) == -0.1
    assert answer_latency([9.2], [9.5], 10.0) is None  # only the cut answer: missed
    assert answer_latency([10.2], [10.1], 10.0) == 10.2 - 10.0  # a flush after the mark cuts nothing
    assert answer_latency([10.2], [], None) is None


def test_prompts_are_spread_over_the_whole_corpus_in_order() -> None:
    chosen = spread_prompts(20)
    assert len(chosen) == 20 and [p.name for p in chosen] == sorted(p.name for p in chosen)
    assert all(MIN_S <= p.duration <= MAX_S and p.text for p in chosen)
    assert chosen[0].name < "b" and chosen[-1].name > "v"  # from the start of the alphabet to the end


def test_chrf_scores_translations_on_normalised_text() -> None:
    reference = ["Please enter the conference PIN number."]
    assert chrf(reference, ["please enter the conference pin number"]) == 100.0
    close, far = chrf(reference, ["Please enter the PIN of the conference."]), chrf(reference, ["Goodbye."])
    assert 40 < close < 100 and far < 15


def test_a_spanish_prompt_has_its_english_reference_under_the_same_name() -> None:
    english, spanish = transcripts("en"), transcripts("es")
    assert english["conf-getpin"].startswith("Please enter the conference") and "conf-getpin" in spanish
