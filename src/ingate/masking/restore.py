"""The answer's placeholders turned back into the client's values, in a stream, exactly.

A restorer sits after the gate's release: the gate governs the upstream's own text (placeholders
and all), and what it releases passes through here on its way to the client. The only text held
back is a possible placeholder not yet closed (`[EMA` at the end of a delta; at most MAX_CHARS);
everything before it goes on at once. So a placeholder split over any number of events is
restored whole, and nothing else waits.

What a placeholder-like copy becomes, under the policy's `answer`:
  restore   its value, when the copy names one (`[EMAIL_1]`, `[Email1]`, `[ email 1 ]`); else (a
            number the vault does not hold) the neutral `[EMAIL]`, never a guess. A copy with no
            number is left as it is: `[EMAIL]` is also what an output rule redacts an e-mail the
            model invented to, and that must never become the client's value
  redact    the neutral `[EMAIL]`
  keep      unchanged (no restorer runs)
Only types the vault holds are read; other bracketed text (`[1]`, `[citation needed]`) is text.
Inside JSON (structured output, a tool call's arguments) a value is written JSON-escaped.
"""

from __future__ import annotations

import json
import re

from ingate.masking.placeholders import PLACEHOLDER_LIKE, norm_type, partial_at, placeholder
from ingate.masking.vault import Vault

RESTORE, KEEP, REDACT = "restore", "keep", "redact"


class Restorer:
    """One answer's restoration. `json`: True inside JSON throughout; a string: JSON once the
    answer starts with it (a tool call's marker); None: plain text."""

    def __init__(self, vault: Vault, answer: str = RESTORE, json_after: str | bool | None = None):
        self.vault, self.answer, self.json_after = vault, answer, json_after
        self.held = ""
        self.head = ""  # the answer's first characters, to tell a tool call from text
        self.restored = 0  # placeholders put back
        self.neutral = 0  # placeholders that went out neutral (mangled past reading, or redact)
        self.parts: list[str] = []

    def feed(self, text: str) -> str:
        """Released text in; what the client may see now out (a partial placeholder stays)."""
        buf = self.held + text
        cut = partial_at(buf)
        ready, self.held = (buf, "") if cut is None else (buf[:cut], buf[cut:])
        return self._out(ready)

    def flush(self) -> str:
        """The end of the answer: a placeholder never closed goes out as it is (it holds no value)."""
        rest, self.held = self.held, ""
        return self._out(rest)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _out(self, ready: str) -> str:
        if not ready:
            return ""
        if len(self.head) < 32:
            self.head += ready[:32]
        out = PLACEHOLDER_LIKE.sub(self._one, ready) if "[" in ready else ready
        self.parts.append(out)
        return out

    def _json(self) -> bool:
        j = self.json_after
        return j is True or (isinstance(j, str) and self.head.startswith(j))

    def _one(self, m: re.Match) -> str:
        kind = norm_type(m.group(1))
        if m.group(2) is None or not self.vault.kinds.get(kind):
            return m.group(0)  # not a placeholder of this request: the model's text, or a redaction
        value = self.vault.values.get(placeholder(kind, int(m.group(2))))
        if value is None or self.answer == REDACT:
            self.neutral += 1
            return f"[{kind}]"
        self.restored += 1
        return json.dumps(value, ensure_ascii=False)[1:-1] if self._json() else value
