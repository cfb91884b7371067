"""The request ingate sends an upstream: the client's first, and each continuation after a withdrawal.

What is pushed down is only what is exact: the client's own stop sequences (the upstream ends
before them, as the gate would); a structure's JSON Schema as `response_format` where the upstream
takes one (`json_schema`; on the first request only, since a grammar sent with a continuation would
start over); and after a withdrawal a `logit_bias` of -100 against the tokens that would start the
withdrawn text again (where the tokenizer is known). Hold-back stays the guarantee: an upstream
that ignores any of them is still governed, and its text is checked against the structure.

A continuation continues the admitted text, by the strongest means the upstream declares:
  continue_final_message   vLLM: the admitted text as a partial assistant message, continued;
  completions + tokenizer  a raw /v1/completions prompt: the chat rendered with the model's own
                           template, then the admitted text;
  otherwise                a fresh chat request with the admitted text as the assistant's message
                           and an instruction to go on from there (the weakest: the model may not).
A raw completion request is continued by appending the admitted text to its prompt.

Under a policy's mask_upstream the request is already masked (ingate.masking: the pipeline masks
its messages and stop sequences); what this module adds from it, the structure's schema, is masked
here, and a continuation's admitted text is the upstream's own, placeholders and all.

A vLLM that runs ingate's logits processor (capability `ingate_mask`) is told the request's policy
in `vllm_xargs`, with its digest (vLLM refuses a policy of that name that differs) and, on a
continuation, the admitted text it follows: prevention then happens before sampling, inside vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ingate.core import Request
from ingate.upstream.config import (
    COMPLETIONS,
    CONTINUE_FINAL_MESSAGE,
    INGATE_MASK,
    JSON_SCHEMA,
    LOGIT_BIAS,
    MAX_LOGIT_BIAS,
    UpstreamModel,
)
from ingate.upstream.vocab import Vocab
from ingate.vllm.rows import XARG_DIGEST, XARG_POLICY, XARG_PREFIX, engine_policy

CHAT, COMPLETION = "/chat/completions", "/completions"
CONTINUE_INSTRUCTION = ("Continue your previous reply exactly where it stops, mid-sentence if need be. Do not "
                        "repeat any of it and do not comment on it.")
RETRY_TEMPERATURE = 0.7  # a greedy continuation with no logit bias would write the withdrawn text again
TOP_LOGPROBS = 20  # OpenAI's maximum for chat; the entropy estimate's k
PREFIX_CHARS = 1024  # of the admitted text, sent to vLLM's ingate processor to prime its automata


@dataclass
class Bodies:
    """The bodies for one client request; `banned` grows with each withdrawal (bias pushed down)."""

    spec: UpstreamModel
    req: Request
    vocab: Vocab | None
    logprobs: bool  # ask for top logprobs (entropy is measured)
    banned: set[int] = field(default_factory=set)

    @property
    def chat(self) -> bool:
        return not isinstance(self.req.messages, str)

    def withdrawn(self, matched: bytes) -> None:
        """A match was withdrawn: steer later continuations away from writing it again."""
        if self.vocab is not None and self.spec.can(LOGIT_BIAS):
            room = MAX_LOGIT_BIAS - len(self.banned)
            self.banned.update(self.vocab.steering_tokens(matched, max(0, room)))

    def build(self, kept: str, attempt: int, kept_tokens: int) -> tuple[str, dict[str, Any]]:
        """(path, body) for the request that continues `kept` (attempt 0: the client's request)."""
        p = self.req.params
        s = p.sampling
        body: dict[str, Any] = {"model": self.spec.model, "stream": True,
                                "max_tokens": max(1, p.max_tokens - kept_tokens), "top_p": s.top_p,
                                "temperature": s.temperature, "seed": (s.seed + attempt) % 2**31}
        if self.req.stop:
            body["stop"] = list(self.req.stop)
        st = self.req.structure
        if st is not None and st.pure_json and not attempt and self.spec.can(JSON_SCHEMA):
            fmt = st.response_format(self.spec.kind)  # a continuation is checked, not constrained
            body["response_format"] = self.req.masking.schema(fmt) if self.req.masking is not None else fmt
        if attempt and self.banned:
            body["logit_bias"] = {str(t): -100 for t in sorted(self.banned)}
        elif attempt:
            body["temperature"] = max(s.temperature, RETRY_TEMPERATURE)
        path = self._route(body, kept)
        if self.spec.can(INGATE_MASK) and engine_policy(self.req.policy).rules:
            pol = self.req.policy
            xargs = {XARG_POLICY: pol.name, XARG_DIGEST: pol.digest}
            if kept:
                xargs[XARG_PREFIX] = kept[-PREFIX_CHARS:]
            body["vllm_xargs"] = xargs
        if self.logprobs:
            if path == CHAT:
                body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
            else:
                body["logprobs"] = 5  # OpenAI's maximum on /v1/completions
        return path, body

    def _route(self, body: dict[str, Any], kept: str) -> str:
        msgs = self.req.messages
        if isinstance(msgs, str):  # a raw completion: continue its prompt
            body["prompt"] = msgs + kept
            return COMPLETION
        if not kept:
            body["messages"] = msgs
            return CHAT
        if self.spec.can(CONTINUE_FINAL_MESSAGE):
            body |= {"messages": msgs + [{"role": "assistant", "content": kept}], "continue_final_message": True,
                     "add_generation_prompt": False}
            return CHAT
        if self.spec.can(COMPLETIONS) and self.vocab is not None and self.vocab.has_template:
            body["prompt"] = self.vocab.render_chat(msgs) + kept
            return COMPLETION
        body["messages"] = msgs + [{"role": "assistant", "content": kept},
                                   {"role": "user", "content": CONTINUE_INSTRUCTION}]
        return CHAT
