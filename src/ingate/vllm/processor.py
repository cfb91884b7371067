"""ingate's gate as a vLLM (V1 engine) logits processor: prevention before sampling, per batch row.

Loaded by vLLM through the `vllm.logits_processors` entry point, or by name:
`vllm serve MODEL --logits-processors ingate.vllm:IngateLogitsProcessor`. It is built in vLLM's
engine-core process, which compiles the policies named by $INGATE_POLICIES (comma-separated
files, or `default`) once against the tokenizer vLLM loaded. A request opts in with
`vllm_xargs={"ingate_policy": NAME}` (`SamplingParams.extra_args` offline); one without is left
untouched. An unknown name is refused at admission (HTTP 400 naming the loaded policies).

Supported: vLLM's V1 model runner (`apply(logits)` after `update_state(BatchUpdate)`). The V2
runner (VLLM_USE_V2_MODEL_RUNNER=1) has another interface and refuses this class at load with
its own error. vLLM refuses custom logits processors under speculative decoding: there is no
enforcement there, and vLLM says so at start.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from ingate.policy import Policy, PolicyError
from ingate.vllm.rows import POLICIES_ENV, Batch, PolicySet, RequestError, check_args, load_policies
from ingate.vllm.tokens import token_bytes

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

log = logging.getLogger("vllm.ingate")  # a child of the logger vLLM configures

_FRONT_POLICIES: dict[str, Policy] | None = None  # the API-server process's view, for validate_params


def _front_policies() -> dict[str, Policy]:
    """The policies named by $INGATE_POLICIES, parsed (not compiled) in the process that admits requests."""
    global _FRONT_POLICIES
    if _FRONT_POLICIES is None:
        _FRONT_POLICIES = load_policies(os.environ.get(POLICIES_ENV))
    return _FRONT_POLICIES


class IngateLogitsProcessor(LogitsProcessor):
    """Masks, for every row that names a policy, the tokens that would complete a forbidden match."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            check_args(sampling_params.extra_args, _front_policies())
        except (RequestError, PolicyError) as e:
            raise ValueError(str(e)) from None

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        from vllm.tokenizers import cached_tokenizer_from_config

        t0 = time.perf_counter()
        mc = vllm_config.model_config
        tokenizer = cached_tokenizer_from_config(mc)
        if tokenizer is None:
            raise RuntimeError("ingate's logits processor needs the tokenizer: do not pass --skip-tokenizer-init")
        vocab = mc.get_vocab_size()
        eos_cfg = getattr(mc.hf_config, "eos_token_id", None)  # int, list, or None
        eos = [tokenizer.eos_token_id, *(eos_cfg if isinstance(eos_cfg, list) else [eos_cfg])]
        self.policies = PolicySet.from_env(token_bytes(tokenizer, vocab), vocab, [t for t in eos if isinstance(t, int)])
        self.batch = Batch(self.policies)
        self.device = device
        log.info("ingate: %d policies (%s) compiled for a %d-token vocabulary in %.2f s", len(self.policies.by_name),
                 ", ".join(self.policies.by_name) or f"none; set {POLICIES_ENV}", vocab, time.perf_counter() - t0)

    def is_argmax_invariant(self) -> bool:
        return False  # a mask changes greedy choices too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        b = self.batch
        for index in batch_update.removed:
            b.remove(index)
        for index, params, _prompt, out in batch_update.added:
            b.add(index, params.extra_args if params is not None else None, out)
        for a, c, direction in batch_update.moved:
            b.move(a, c, swap=direction == MoveDirectionality.SWAP)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows, ids = self.batch.masks()
        if len(rows):
            r = torch.from_numpy(rows).to(self.device, non_blocking=True)
            t = torch.from_numpy(ids).to(self.device, non_blocking=True)
            logits.index_put_((r, t), torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
        return logits
