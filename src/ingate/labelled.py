"""Labelled texts: CSV or JSONL files of texts marked admissible or not.

`ingate calibrate` measures a rule on them, and a semantic rule's trained head (`head: train:`) learns
from them. A row has a text (`text`, or `prompt`), a label (`admissible`: true/false, or `label`:
safe/unsafe and the like) and, optionally, a `source`: what the text came from (the prompt a response
answers, a document). Rows that share a source are kept together when data is split, so a
cross-validated figure never scores a text whose sibling was trained on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class CalibrationError(ValueError):
    """Labelled data or options that cannot be used; the message says where and what to fix."""


@dataclass(frozen=True)
class Labelled:
    text: str
    admissible: bool
    source: str | None = None  # rows with one source stay on one side of every split
    prompt: str | None = None  # the request a response answers (a `prompt` column beside `text`)


TEXT_COLUMNS = ("text", "prompt")
TRUE_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# `label` column values: the word on the left is admissible, the one on the right is not.
LABEL_WORDS = {"safe": True, "unsafe": False, "admissible": True, "inadmissible": False,
               "benign": True, "harmful": False, "neutral": True, "hate": False}
JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ---- reading labelled files ------------------------------------------------------------------

def _label(row: dict[str, Any], where: str) -> bool:
    if "admissible" in row:
        raw, known, col, use = row["admissible"], TRUE_WORDS, "admissible", "true/false, 1/0 or yes/no"
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
    else:
        raw, known, col = row["label"], LABEL_WORDS, "label"
        use = "safe/unsafe, admissible/inadmissible, benign/harmful or neutral/hate (the first of each is admissible)"
    word = str(raw if raw is not None else "").strip().lower()
    if word not in known:
        raise CalibrationError(f"{where}: unknown {col} value {raw!r}; use {use}")
    return known[word]


def _columns(cols: Sequence[str], where: str) -> None:
    found = ", ".join(cols) or "none"
    if not any(c in cols for c in TEXT_COLUMNS):
        raise CalibrationError(f"{where}: no text column; add a column `text` (or `prompt`); columns found: {found}")
    if "admissible" not in cols and "label" not in cols:
        raise CalibrationError(f"{where}: no label column; add a column `admissible` (true/false) or `label` "
                               f"(safe/unsafe); columns found: {found}")


def _text(row: dict[str, Any], where: str) -> str:
    col = next(c for c in TEXT_COLUMNS if c in row)
    raw = row[col]
    if not isinstance(raw, str):
        raise CalibrationError(f"{where}: {col} is {json.dumps(raw)}, not a string; write the text in quotes")
    if not raw.strip():
        raise CalibrationError(f"{where}: empty {col}; write the text or remove the row")
    return raw.strip()


def _csv_rows(path: Path, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(f)
    header: list[str] | None = None
    line = 0
    for rec in reader:
        start, line = line + 1, reader.line_num
        if header is None:
            header = [h.strip().lower() for h in rec]
            _columns(header, f"{path}, line {start} (header)")
            continue
        if not any(c.strip() for c in rec):
            continue  # blank line
        if len(rec) != len(header):
            raise CalibrationError(f"{path}, line {start}: {len(rec)} fields but the header has {len(header)} "
                                   f"({', '.join(header)}); quote fields that contain commas")
        yield start, dict(zip(header, rec, strict=True))


def _jsonl_rows(path: Path, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}, line {n}: not valid JSON ({e.msg}); "
                                   "write one JSON object a line") from None
        if not isinstance(obj, dict):
            raise CalibrationError(f"{path}, line {n}: a {type(obj).__name__}, not a JSON object; write "
                                   '{"text": ..., "admissible": true} a line')
        row = {str(k).strip().lower(): v for k, v in obj.items()}
        _columns(list(row), f"{path}, line {n}")
        yield n, row


def _source(row: dict[str, Any]) -> str | None:
    raw = row.get("source")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return str(raw).strip()


def read_rows(path: str | Path, both_classes: bool = True) -> list[Labelled]:
    """Labelled rows from a CSV file (with a header row) or a JSONL file (.jsonl, .ndjson)."""
    p = Path(path)
    rows = _jsonl_rows if p.suffix.lower() in JSONL_SUFFIXES else _csv_rows
    out: list[Labelled] = []
    try:
        with p.open(encoding="utf-8-sig", newline="") as f:
            for n, row in rows(p, f):
                where = f"{p}, line {n}"
                prompt = row.get("prompt") if "text" in row else None  # else `prompt` is the text itself
                prompt = (prompt.strip() or None) if isinstance(prompt, str) else None
                out.append(Labelled(_text(row, where), _label(row, where), _source(row), prompt))
    except FileNotFoundError:
        raise CalibrationError(f"{p}: labelled file does not exist") from None
    except IsADirectoryError:
        raise CalibrationError(f"{p}: is a directory; pass a CSV or JSONL file") from None
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise CalibrationError(f"{p}: not valid CSV: {e}") from None
    except OSError as e:
        raise CalibrationError(f"{p}: cannot read: {e}") from None
    if not out:
        raise CalibrationError(f"{p}: no labelled texts; write a header row (text,admissible) and one text a row")
    n_ok = sum(r.admissible for r in out)
    if both_classes and (n_ok == 0 or n_ok == len(out)):
        have = "admissible" if n_ok else "inadmissible"
        raise CalibrationError(f"{p}: all {len(out)} texts are {have}; AUROC and a threshold need both classes, "
                               f"add {'inadmissible' if n_ok else 'admissible'} examples")
    return out


def read_labelled(path: str | Path) -> list[tuple[str, bool]]:
    """(text, admissible) pairs from a CSV file (with a header row) or a JSONL file (.jsonl, .ndjson)."""
    return [(r.text, r.admissible) for r in read_rows(path)]


# ---- overlap between a training file and a held-out one -------------------------------------------

NEAR_DUPLICATE = 0.9  # cosine of hashed word 1- and 2-gram counts at or above which two texts are one
_DIMS = 1 << 14


def normalized(text: str) -> str:
    """Case, punctuation and spacing folded away: texts equal under it are the same text."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.casefold()).split())


def _ngram_vectors(texts: Sequence[str]) -> Any:
    import zlib

    import numpy as np

    out = np.zeros((len(texts), _DIMS), dtype=np.float32)
    for i, t in enumerate(texts):
        words = normalized(t).split()
        for g in words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]:
            out[i, zlib.crc32(g.encode("utf-8")) % _DIMS] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Overlap:
    held_out: int  # row index in the held-out file
    train: int  # row index of the training text it repeats
    similarity: float  # 1.0 for the same normalized text


def overlap(train: Sequence[str], held_out: Sequence[str], near: float = NEAR_DUPLICATE,
            chunk: int = 512) -> list[Overlap]:
    """Held-out texts that repeat a training text: the same text once case, punctuation and spacing
    are folded, or a near duplicate (cosine of word 1- and 2-gram counts >= `near`)."""

    exact = {normalized(t): i for i, t in enumerate(train)}
    tv = _ngram_vectors(train)
    out: list[Overlap] = []
    for s in range(0, len(held_out), chunk):
        part = held_out[s:s + chunk]
        sims = _ngram_vectors(part) @ tv.T
        for j, t in enumerate(part):
            if (i := exact.get(normalized(t))) is not None:
                out.append(Overlap(s + j, i, 1.0))
            elif sims.shape[1] and (best := int(sims[j].argmax())) >= 0 and sims[j, best] >= near:
                out.append(Overlap(s + j, best, float(sims[j, best])))
    return out
