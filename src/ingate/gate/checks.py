"""Checksums that a match must pass, as finite-state machines stepped byte by byte.

A built-in pattern may carry one: its detector runs the pattern's DFA and the check side by
side (a product automaton, computed lazily: threads are keyed by both states), so a card number
that fails the Luhn sum or an IBAN that fails mod 97 is never a match. Separators pass through
a check unchanged. Token masks use the pattern alone, a superset, which only masks more.
"""

from __future__ import annotations

from dataclasses import dataclass

State = tuple[int, ...]


class Check:
    name = "check"
    edge = "[^0-9]"  # a regex for one character that may follow a match
    stateless = False  # True: step never changes the state (only the edges are checked)

    def touches(self, b: int) -> bool:
        """Can byte `b` not stand next to a match (it would be part of the number)?"""
        return 0x30 <= b <= 0x39

    def initial(self) -> State:
        raise NotImplementedError

    def step(self, s: State, b: int) -> State | None:
        """None: no match through this state can pass."""
        raise NotImplementedError

    def accepts(self, s: State) -> bool:
        raise NotImplementedError


_DOUBLE = tuple((2 * d) if d < 5 else (2 * d - 9) for d in range(10))


@dataclass(frozen=True)
class Luhn(Check):
    """12 to 19 digits whose Luhn sum is 0 mod 10. State: (digits, sum if the count ends odd,
    sum if it ends even); which digits are doubled depends on the count, known only at the end."""

    min_digits: int = 12
    max_digits: int = 19
    name = "luhn"

    def initial(self) -> State:
        return (0, 0, 0)

    def step(self, s: State, b: int) -> State | None:
        if not 0x30 <= b <= 0x39:
            return s
        n, a, c = s
        if n >= self.max_digits:
            return None
        d = b - 0x30
        n += 1
        if n % 2:  # odd position: doubled when the count ends even
            return (n, (a + _DOUBLE[d]) % 10, (c + d) % 10)
        return (n, (a + d) % 10, (c + _DOUBLE[d]) % 10)

    def accepts(self, s: State) -> bool:
        n, a, c = s
        return self.min_digits <= n <= self.max_digits and (a if n % 2 == 0 else c) == 0


_P = 97
_E6 = pow(10, 6, _P)


@dataclass(frozen=True)
class Mod97(Check):
    """An IBAN's check (ISO 13616): the country and check digits moved behind the account, letters
    as 10..35, the number is 1 mod 97. Read left to right: c = the first four as a number mod 97,
    v = the account so far times 10^6 mod 97; it passes when v + c = 1 mod 97."""

    min_bban: int = 11
    max_bban: int = 30
    name = "mod97"
    edge = "[^0-9A-Za-z]"

    def touches(self, b: int) -> bool:
        return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A

    def initial(self) -> State:
        return (0, 0, 0)  # (characters read, c, v)

    def step(self, s: State, b: int) -> State | None:
        if 0x30 <= b <= 0x39:
            x, width = b - 0x30, 10
        elif 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A:
            x, width = (b | 0x20) - 0x61 + 10, 100
        else:
            return s
        k, c, v = s
        if k - 4 >= self.max_bban:
            return None
        if k < 4:
            return (k + 1, (c * width + x) % _P, v)
        return (k + 1, c, (v * width + x * _E6) % _P)

    def accepts(self, s: State) -> bool:
        k, c, v = s
        return self.min_bban <= k - 4 <= self.max_bban and (v + c) % _P == 1


@dataclass(frozen=True)
class Whole(Check):
    """No checksum: the number only has to stand whole (no digit on either side)."""

    name = "whole number"
    stateless = True

    def initial(self) -> State:
        return ()

    def step(self, s: State, b: int) -> State | None:
        return s

    def accepts(self, s: State) -> bool:
        return True


CHECKS: dict[str, Check] = {"luhn": Luhn(), "mod97": Mod97(), "whole": Whole()}
