"""Shared fixtures. The model is the real embedded SmolLM2-135M through llama.cpp: never mocked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ingate.policy import parse_policy

ROOT = Path(__file__).resolve().parent.parent
INGATE = str(Path(sys.executable).with_name("ingate"))
PII_PROMPT = "Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132."
PARIS_PROMPT = "Write a short paragraph about Paris and its famous tower."


@pytest.fixture(scope="session")
def runtime(tmp_path_factory):
    from ingate.runtime import Runtime

    return Runtime.load(audit=tmp_path_factory.mktemp("audit") / "audit.sqlite3")


def policy(yaml_text: str, name: str = "test.yaml"):
    return parse_policy(yaml_text, source=name)


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]
