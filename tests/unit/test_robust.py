"""The stricter answer parsers of `scoring=robust`: what a reply commits to, or nothing."""

from __future__ import annotations

import pytest

from harness.benchmarks import robust

OPTIONS = ("A. a red car", "B. a blue bus", "C. a dog", "D. nothing")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"), (" (B) a blue bus", "B"), ("**C**. a dog", "C"), ("D\n", "D"), ("A: red", "A"),
        ("The answer is C.", "C"), ("Answer: b", "B"), ("I think it shows a dog.", "C"),
        ("Both a red car and a dog.", None), ("", None), (None, None), ("Because of the weather", None),
        ("The answer is B, or maybe answer is C", None), ("A dog is shown.", "C"),
    ],
)  # fmt: skip
def test_letter_reads_the_option_a_reply_commits_to(text, expected):
    assert robust.letter(text, OPTIONS) == expected


def test_letter_respects_the_number_of_options():
    assert robust.letter("E", n=4) is None and robust.letter("E", n=5) == "E"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Yes.", "Yes"), ("no", "No"), ("Y", None), ("Not yet, no.", "No"), ("Nobody knows; yes", "Yes"), (None, None)],
)
def test_yes_no_takes_the_first_whole_word(text, expected):
    assert robust.yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3), ("They did it 12 times", 12), ("three times", 3), ("Twenty.", 20), ("1 2", 1), ("none", None)],
)
def test_count_takes_the_first_whole_number(text, expected):
    assert robust.count(text) == expected
