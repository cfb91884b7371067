"""The three drivers of one gate, and what they share (`base`):

  full        ingate's own loop over a local engine: masks before sampling, hold-back, rollback
  mask_first  as an engine that samples itself drives a logits processor (vLLM): a mask per step
  text        over a stream of text deltas (an OpenAI-compatible upstream): hold-back, cancel and continue
"""
