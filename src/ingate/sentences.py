"""Where a sentence (or a clause) ends, in bytes: the one definition that entropy budgets (end a
response at the next sentence end) and semantic groups (close a group at a clause end) share."""

from __future__ import annotations

SENTENCE_ENDS = tuple(s.encode() for s in (".", "!", "?", "\n", "。", "！", "？"))
CLAUSE_ENDS = SENTENCE_ENDS + (b";", b":")


def end_after(data: bytes, clauses: bool = False) -> int | None:
    """The offset just after the first sentence end in `data` (a clause end too with `clauses`),
    or None. Multi-byte ends ('。') are whole: the offset never splits a character."""
    ends = [i + len(e) for e in (CLAUSE_ENDS if clauses else SENTENCE_ENDS) if (i := data.find(e)) >= 0]
    return min(ends) if ends else None
