"""The built-in PII pack: name -> (regex, placeholder), and the checksums some must pass.

The regexes are written for token masks: no anchors and no lookaround, because a mask decides
on bytes as they are generated. Numbers survive re-punctuation: between the digit groups of a
card, an SSN, an IBAN or a phone number, any short run of separators (spaces, commas, dots,
dashes, slashes, brackets, invisible spaces) matches, so "4180, 9208, 7794, 4069" is still a
card. What can be checked is checked inside the automaton (`ingate.gate.checks`): a "card" that
fails the Luhn sum and an "IBAN" that fails mod 97 are not matches. A rule that must not
over-match uses its own `regex`.
"""

from __future__ import annotations

import re


def encoded(ch: str, names: tuple[str, ...] = ()) -> str:
    """`ch` as written, or in the encodings text carries it in practice: percent-encoding (%40),
    an HTML character reference (&#64;, &#x40;, &commat;) or a JSON/JavaScript escape (\\u0040).
    Matched by the automaton itself, so an encoded value is found, held back and redacted as
    exactly as a plain one."""
    cp = ord(ch)
    hx = f"{cp:02x}"
    ci = "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in hx)  # hex digits in either case
    pct = "".join("%" + "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in f"{b:02x}") for b in ch.encode())
    alts = [re.escape(ch), pct, f"&#0*{cp};", f"&#[xX]0*{ci};", r"\\u00" + ci]
    alts += [f"&{n};" for n in names]
    return "(?:" + "|".join(alts) + ")"


# one separator between digit groups; a run is 1-3 of them
_S = r"[ ,./()\[\]\-\u00a0\u2009\u202f\u200b-\u200d\u2060]"
_RUN = _S + "{1,3}"
# the same, or a space, dash or dot encoded (&nbsp; between a phone number's groups in HTML, %20 in a tel: link)
_SE = "(?:" + _S + "|" + encoded(" ") + "|" + encoded("\u00a0", ("nbsp",)) + "|" + encoded("-") + "|" + \
    encoded(".", ("period",)) + ")"
_RUNE = _SE + "{1,3}"
# a card's: &nbsp; alone of the encodings (the Luhn sum counts every digit: %20 or &#160; would join it)
_RUNC = "(?:" + _S + "|&nbsp;){1,3}"
_AT, _DOT = encoded("@", ("commat",)), encoded(".", ("period",))
_SSN_AREA = r"(?:00[1-9]|0[1-9][0-9]|[1-5][0-9]{2}|6[0-5][0-9]|66[0-57-9]|6[7-9][0-9]|[78][0-9]{2})"

BUILTIN_PATTERNS: dict[str, tuple[str, str]] = {
    # the @ and the domain's dots also encoded: "name%40example.com" in a mailto: link, "&#64;" in a page
    "email": (r"[A-Za-z0-9._%+-]+" + _AT + r"[A-Za-z0-9-]+(?:" + _DOT + r"[A-Za-z0-9-]+)*" + _DOT + r"[A-Za-z]{2,}",
              "[EMAIL]"),
    # US 3-3-4; international with a + prefix; (area) local; national with a leading 0 and
    # grouped digits; bare 3-4 and 3-3-3 local numbers. bench/pii_leak.py found the US-only
    # pattern letting 8 of 9 reproduced non-US numbers through.
    # re-punctuated runs only where 10+ digits make a number phone-shaped; bare 3-4 local numbers
    # keep a single space, dot or dash (a comma there would make "2019, 2020" a phone number); a
    # national number is its trunk 0 and area code, then groups, or one subscriber run of 6-8
    # digits ("0800-2767261", "020 79460958")
    "phone": (r"(?:\+?1" + _SE + r"{0,3})?\(?[0-9]{3}\)?" + _SE + r"{0,3}[0-9]{3}" + _SE + r"{0,3}[0-9]{4}"
              r"|\+[0-9]{1,3}(?:" + _S + r"{0,3}\(0\))?(?:" + _S + r"{0,3}[0-9]){6,12}"
              r"|\([0-9]{2,4}\)[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}"
              r"|0[0-9]{2,4}(?:[ .-][0-9]{2,4}){2,4}|0[0-9]{2,4}[ .-][0-9]{6,8}"
              r"|[0-9]{3}[ .-][0-9]{4}|[0-9]{3}[ .-][0-9]{3}[ .-][0-9]{3}", "[PHONE]"),
    # 12-19 digits (Maestro has 12; the Luhn check in CHECKED counts them), in groups of 3 or more
    # and maybe a short last one ("4180, 9208, 7794, 4069", "4047 7372 1514 2"), or spelled out
    # digit by digit ("4 1 8 0 ..."); mixed small groups are dates, ISBNs and lists, not cards
    "credit_card": (r"[0-9]{3,}(?:" + _RUNC + r"[0-9]{3,}){0,5}(?:" + _RUNC + r"[0-9]{1,2})?"
                    r"|[0-9](?:" + _RUNC + r"[0-9]){11,18}", "[CREDIT_CARD]"),
    # area 001-899 but 666, group 01-99, serial 0001-9999 (never issued otherwise), groups separated
    "us_ssn": (_SSN_AREA + _RUNE + r"(?:0[1-9]|[1-9][0-9])" + _RUNE +
               r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})", "[SSN]"),
    # the SSN's shape in the 900-999 area: an ITIN (the IRS's taxpayer number for those without an
    # SSN), personal data too; any group, as the numbers people are given and quote are
    "itin": (r"9[0-9]{2}" + _RUNE + r"[0-9]{2}" + _RUNE + r"[0-9]{4}", "[ITIN]"),
    "iban": (r"[A-Za-z]{2}[0-9]{2}(?:" + _S + r"{0,3}[A-Za-z0-9]){11,30}", "[IBAN]"),
    "ipv4": (r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
             "[IP]"),
    "api_key": (r"(?:sk|pk|rk)[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}",
                "[API_KEY]"),
}


# pattern name -> what its matches must pass (ingate.gate.checks): a checksum, and for every one
# of them to stand whole (no digit touching it: "123-45-67890" holds no SSN)
CHECKED = {"credit_card": "luhn", "iban": "mod97", "us_ssn": "whole", "itin": "whole", "phone": "whole"}
