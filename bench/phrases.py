"""Seeded invented names, for ban lists that are large but reproducible (bench/masks.py, bench/vllm_plugin.py)."""

from __future__ import annotations

import random


def made_up_phrases(n: int, seed: int) -> list[str]:
    """`n` distinct two-word invented names."""
    rng = random.Random(seed)
    onsets = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "r", "s", "st", "t",
              "tr", "v", "z", "sh", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
    codas = ["", "", "n", "r", "l", "s", "k", "th", "m"]

    def word() -> str:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                    for _ in range(rng.randint(2, 3)))
        return w.capitalize()

    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        p = f"{word()} {word()}"
        if p.lower() not in seen:
            seen.add(p.lower())
            out.append(p)
    return out
