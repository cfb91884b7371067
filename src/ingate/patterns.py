"""The built-in PII pack: name -> (regex, placeholder).

The regexes are written for token masks: no anchors and no lookaround, because a mask decides
on bytes as they are generated. They err towards catching too much (a 13-digit order number
looks like a card number); a rule that must not over-match uses its own `regex`.
"""

from __future__ import annotations

BUILTIN_PATTERNS: dict[str, tuple[str, str]] = {
    "email": (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "[EMAIL]"),
    # US 3-3-4; international with a + prefix; (area) local; national with a leading 0 and
    # grouped digits; bare 3-4 and 3-3-3 local numbers. bench/pii_leak.py found the US-only
    # pattern letting 8 of 9 reproduced non-US numbers through.
    "phone": (r"(?:\+?1[-. ]?)?\(?[0-9]{3}\)?[-. ]?[0-9]{3}[-. ]?[0-9]{4}"
              r"|\+[0-9]{1,3}(?:[ .-]?\(0\))?(?:[ .-]?[0-9]){6,12}"
              r"|\([0-9]{2,4}\)[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}"
              r"|0[0-9]{2,4}(?:[ .-][0-9]{2,4}){2,4}"
              r"|[0-9]{3}[ .-][0-9]{4}|[0-9]{3}[ .-][0-9]{3}[ .-][0-9]{3}", "[PHONE]"),
    "credit_card": (r"[0-9](?:[ -]?[0-9]){12,18}", "[CREDIT_CARD]"),
    "us_ssn": (r"[0-9]{3}-[0-9]{2}-[0-9]{4}", "[SSN]"),
    "iban": (r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}", "[IBAN]"),
    "ipv4": (r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
             "[IP]"),
    "api_key": (r"(?:sk|pk|rk)[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}",
                "[API_KEY]"),
}
