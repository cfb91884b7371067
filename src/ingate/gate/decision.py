"""What the gate decides: the actions, and the audited record of each decision."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What one decision did. A StrEnum: it is stored, compared and serialized as its string."""

    PREVENT = "prevent"  # a match prevented: masked, or rolled back and resampled
    REDACT = "redact"  # a match released as its placeholder
    STOP = "stop"  # the stream ended before a match (or a rejected group)
    RESAMPLE = "resample"  # a semantic group rolled back and regenerated
    REFUSE = "refuse"  # a request refused before generating (escalation, input screening)
    ABSTAIN = "abstain"  # an entropy budget spent
    CANCEL = "cancel"  # the client went away
    ERROR = "error"  # a check or the engine failed: the stream ended closed
    MASK = "mask"  # a request's value replaced by a placeholder before the model saw it (ingate.masking)


@dataclass(frozen=True)
class Decision:
    """One act of the gate, audited before the text it concerns is released.

    `detail` is for the audit and the operator: it may name the phrase, the pattern, a score.
    `public` is what a client may be told (ingate.report): set where a decision can say more than
    its action without disclosing anything withheld ("redacted one email"); empty otherwise.
    """

    rule_id: str
    action: str  # an Action
    token_index: int
    byte_offset: int
    matched: bytes
    detail: str
    public: str = ""
