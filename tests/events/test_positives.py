"""The positives rule: which events are retrieval targets."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.events.positives import parse_positives

ACTIONS = np.array([0, 2, 5, 1, 2])
VALUES = np.array([4.0, 3.5, np.nan, 5.0, 4.5], dtype=np.float32)


@pytest.mark.parametrize(
    "rule,expected",
    [
        ("all", [True] * 5),
        (" all ", [True] * 5),
        ("value>=4", [True, False, False, True, True]),
        ("value > 4", [False, False, False, True, True]),
        ("value<4", [False, True, False, False, False]),
        ("value<=3.5", [False, True, False, False, False]),
        ("value==5", [False, False, False, True, False]),
        ("action:click,purchase", [False, True, True, False, True]),
        ("action:2, 5", [False, True, True, False, True]),
        ("action:interaction", [True, False, False, False, False]),
    ],
)
def test_good_rules_select_the_positive_events(rule, expected):
    assert parse_positives(rule).mask(ACTIONS, VALUES).tolist() == expected


def test_all_is_the_only_rule_that_keeps_every_event():
    assert parse_positives("all").is_all
    assert not parse_positives("value>=0").is_all
    assert not parse_positives("action:0").is_all


@pytest.mark.parametrize(
    "rule,problem",
    [
        ("rating>=4", r"'rating>=4' is not a positives rule; write 'all', 'value>=4'"),
        ("value>=four", r"compares value with 'four', which is not a number"),
        ("value>=inf", r"needs a finite number"),
        ("value=>4", r"is not a positives rule"),
        ("action:clicks", r"'clicks' is neither an action name \(interaction, view, click"),
        ("action:256", r"'256' is neither an action name .* nor a code in 0\.\.255"),
        ("action:click,", r"names an empty action"),
        ("", r"'' is not a positives rule"),
    ],
)
def test_bad_rules_name_the_setting_the_problem_and_what_to_write(rule, problem):
    with pytest.raises(ValueError, match=problem) as err:
        parse_positives(rule, setting="train.positives")
    assert str(err.value).startswith("train.positives: ")
