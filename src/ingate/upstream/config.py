"""Which models a server offers, and where each one runs: the models file.

    models:
      smollm2:                       # the name clients send as `model`
        gguf: embedded               # ingate's own loop: `embedded`, or a path to a GGUF file
      llama-70b:
        kind: fireworks              # a preset of capabilities (see KIND_CAPABILITIES)
        base_url: https://api.fireworks.ai/inference/v1
        model: accounts/fireworks/models/llama-v3p1-70b-instruct
        api_key_env: FIREWORKS_API_KEY   # the key stays in the environment, never in this file
        capabilities: [logit_bias, logprobs]   # overrides the preset; [+ingate_mask] adds to it
        tokenizer: /models/llama3.gguf   # optional: the upstream's vocabulary, for exact logit_bias
        timeout_s: 120               # the whole request, first byte to last
        idle_timeout_s: 30           # the longest silence inside a stream
        max_concurrency: 8           # requests in flight to this upstream
        retries: 2                   # retries of a failed request while nothing has been released

The first model is the default for a request that names none. Every error names the model and
the field to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# What an upstream can take before sampling, or how it can continue a message (docs/upstreams.md,
# "Capabilities by upstream kind").
LOGIT_BIAS = "logit_bias"  # OpenAI-style {token id: -100..100}, at most MAX_LOGIT_BIAS entries
LOGPROBS = "logprobs"  # top_logprobs per streamed token: entropy can be estimated
CONTINUE_FINAL_MESSAGE = "continue_final_message"  # vLLM: continue a partial assistant message
COMPLETIONS = "completions"  # a raw /v1/completions prompt (with `tokenizer`: the chat template is known)
GRAMMAR = "grammar"  # llama.cpp GBNF
JSON_SCHEMA = "json_schema"  # response_format with a JSON Schema (llama.cpp: json_object + schema)
STRUCTURED_OUTPUTS = "structured_outputs"  # vLLM guided decoding
BAD_WORDS = "bad_words"  # vLLM
INGATE_MASK = "ingate_mask"  # a vLLM running ingate's logits processor
CAPABILITIES = frozenset({LOGIT_BIAS, LOGPROBS, CONTINUE_FINAL_MESSAGE, COMPLETIONS, GRAMMAR, JSON_SCHEMA,
                          STRUCTURED_OUTPUTS, BAD_WORDS, INGATE_MASK})
MAX_LOGIT_BIAS = 300  # OpenAI rejects larger maps

KIND_CAPABILITIES: dict[str, frozenset[str]] = {
    "openai": frozenset({LOGIT_BIAS, LOGPROBS, JSON_SCHEMA}),
    "fireworks": frozenset({LOGIT_BIAS, LOGPROBS, COMPLETIONS, JSON_SCHEMA, GRAMMAR}),
    "vllm": frozenset({LOGIT_BIAS, LOGPROBS, CONTINUE_FINAL_MESSAGE, COMPLETIONS, STRUCTURED_OUTPUTS, BAD_WORDS,
                       JSON_SCHEMA}),
    "llama.cpp": frozenset({LOGIT_BIAS, LOGPROBS, COMPLETIONS, GRAMMAR, JSON_SCHEMA}),
    "ollama": frozenset({COMPLETIONS, JSON_SCHEMA}),
    "generic": frozenset(),  # only what every OpenAI-compatible server does: hold-back governs it all
}


class ModelsError(ValueError):
    """A models file or an --upstream flag that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model run by ingate's own loop (in the engine core process)."""

    name: str
    gguf: str | None = None  # None: the embedded default model


@dataclass(frozen=True)
class UpstreamModel:
    """An OpenAI-compatible server ingate governs over its stream."""

    name: str
    base_url: str
    model: str
    kind: str = "generic"
    api_key_env: str | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)
    tokenizer: str | None = None  # `embedded` or a GGUF path whose vocabulary the upstream uses
    timeout_s: float = 120.0
    idle_timeout_s: float = 30.0
    max_concurrency: int = 8
    retries: int = 2

    def api_key(self) -> str | None:
        """The key from its environment variable (checked at load: a missing one is an error)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


ModelSpec = LocalModel | UpstreamModel
_UPSTREAM_KEYS = {"kind", "base_url", "model", "api_key_env", "capabilities", "tokenizer", "timeout_s",
                  "idle_timeout_s", "max_concurrency", "retries"}


def upstream(name: str, base_url: str, model: str | None = None, kind: str = "generic",
             api_key_env: str | None = None, capabilities: list[str] | None = None, tokenizer: str | None = None,
             timeout_s: float = 120.0, idle_timeout_s: float = 30.0, max_concurrency: int = 8,
             retries: int = 2) -> UpstreamModel:
    """A checked UpstreamModel: every problem is a ModelsError naming the model and the field."""
    where = f"model {name!r}"
    if not base_url.startswith(("http://", "https://")):
        raise ModelsError(f"{where}: base_url {base_url!r} must start with http:// or https:// "
                          "(the API root, e.g. https://api.openai.com/v1)")
    if kind not in KIND_CAPABILITIES:
        raise ModelsError(f"{where}: kind {kind!r} is not one of {', '.join(KIND_CAPABILITIES)}")
    caps = KIND_CAPABILITIES[kind]
    if capabilities is not None:  # a list replaces the kind's preset; "+name" entries add to it
        plain = [c for c in capabilities if not c.startswith("+")]
        caps = (frozenset(plain) if plain or not capabilities else caps) | {c[1:] for c in capabilities
                                                                             if c.startswith("+")}
    if unknown := sorted(caps - CAPABILITIES):
        raise ModelsError(f"{where}: unknown capability {unknown[0]!r}; known: {', '.join(sorted(CAPABILITIES))}")
    if api_key_env is not None and not os.environ.get(api_key_env):
        raise ModelsError(f"{where}: the environment variable {api_key_env} (api_key_env) is not set; "
                          "export the upstream's API key in it")
    for key, v in (("timeout_s", timeout_s), ("idle_timeout_s", idle_timeout_s)):
        if not isinstance(v, int | float) or v <= 0:
            raise ModelsError(f"{where}: {key} must be a positive number of seconds, got {v!r}")
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ModelsError(f"{where}: max_concurrency must be a whole number >= 1, got {max_concurrency!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ModelsError(f"{where}: retries must be a whole number >= 0, got {retries!r}")
    if tokenizer not in (None, "embedded") and not Path(tokenizer).is_file():
        raise ModelsError(f"{where}: tokenizer {tokenizer!r} is neither 'embedded' nor a GGUF file")
    return UpstreamModel(name, base_url.rstrip("/"), model or name, kind, api_key_env, caps, tokenizer,
                         float(timeout_s), float(idle_timeout_s), max_concurrency, retries)


def load_models(path: str | Path) -> list[ModelSpec]:
    """The models a models file lists, in order (the first is the default)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelsError(f"cannot read models file {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ModelsError(f"models file {p} is not valid YAML: {e}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise ModelsError(f"models file {p}: expected a mapping `models:` of name -> {{gguf: ...}} or "
                          "{base_url: ..., model: ...}")
    out: list[ModelSpec] = []
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ModelsError(f"models file {p}: model {name!r} must be a mapping")
        try:
            out.append(_entry(str(name), entry))
        except ModelsError as e:
            raise ModelsError(f"models file {p}: {e}") from None
    return out


def _entry(name: str, entry: dict) -> ModelSpec:
    if "gguf" in entry:
        if set(entry) != {"gguf"}:
            raise ModelsError(f"model {name!r}: a local model takes only `gguf`, not "
                              f"{', '.join(sorted(set(entry) - {'gguf'}))}")
        g = entry["gguf"]
        if not isinstance(g, str):
            raise ModelsError(f"model {name!r}: gguf must be `embedded` or a path to a GGUF file")
        return LocalModel(name, None if g == "embedded" else g)
    if "base_url" not in entry:
        raise ModelsError(f"model {name!r}: give `gguf: embedded|PATH` (a local model) or `base_url` (an upstream)")
    if unknown := sorted(set(entry) - _UPSTREAM_KEYS):
        raise ModelsError(f"model {name!r}: unknown field {unknown[0]!r}; an upstream takes "
                          f"{', '.join(sorted(_UPSTREAM_KEYS))}")
    caps = entry.get("capabilities")
    if caps is not None and (not isinstance(caps, list) or not all(isinstance(c, str) for c in caps)):
        raise ModelsError(f"model {name!r}: capabilities must be a list of names")
    for key in ("base_url", "model", "kind", "api_key_env", "tokenizer"):
        if key in entry and not isinstance(entry[key], str):
            raise ModelsError(f"model {name!r}: {key} must be a string")
    return upstream(name, **entry)
