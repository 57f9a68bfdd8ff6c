"""A stricter reading of answers than the official scripts', for the `scoring=robust` columns.

Official rules are kept exactly (a leading space or "The answer is B" is wrong for StreamingBench; any
substring "A" counts for OVO-Bench). These parsers read what a person would: the answer the reply
commits to, or nothing when it names none or several. Adapters report the result as `subscores["robust"]`;
it is never mixed into the official number.
"""

from __future__ import annotations

import re

_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
NUMBER_WORDS = {w: i for i, w in enumerate([*_WORDS.split(), "seventeen", "eighteen", "nineteen", "twenty"])}


def letter(text: str | None, options: tuple[str, ...] | list[str] = (), n: int | None = None) -> str | None:
    """The option letter a reply commits to: a leading letter ("B", "(B)", "B. red", "**B**"), "answer is B",
    else the one option whose text it quotes; None when none or several."""
    if not text:
        return None
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: n or len(options) or 4]
    body = text.strip().strip("*`_ ")
    lead = re.match(rf"\(?([{letters}])(?:[.:)\]]|\s*$|\s*\n)", body)  # not "A dog ..." (an article)
    if lead:
        return lead.group(1)
    said = re.findall(rf"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([{letters}])\b", body, re.IGNORECASE)
    if len(set(said)) == 1:
        return said[0].upper()
    quoted = [i for i, o in enumerate(options) if _option_text(o) and _option_text(o).lower() in body.lower()]
    return letters[quoted[0]] if len(quoted) == 1 else None


def yes_no(text: str | None) -> str | None:
    """ "Yes" or "No" by the first of the two words in the reply (case-insensitive); None if neither."""
    found = re.search(r"\b(yes|no)\b", text or "", re.IGNORECASE)
    return found.group(1).capitalize() if found else None


def count(text: str | None) -> int | None:
    """The first whole number of the reply, in digits or as a word up to twenty; None if there is none."""
    found = re.search(rf"\b(\d+|{'|'.join(NUMBER_WORDS)})\b", text or "", re.IGNORECASE)
    if not found:
        return None
    token = found.group(1).lower()
    return int(token) if token.isdigit() else NUMBER_WORDS[token]


def _option_text(option: str) -> str:
    """An option without its "A. " prefix (StreamingBench options carry one)."""
    return re.sub(r"^\s*[A-Z][.)]\s*", "", option).strip()
