"""Drivers of one gate. ingate's own loop (`ingate.loop`) drives a FULL gate; these drive the
other two modes: `mask_first` as an engine that samples itself would (vLLM), `text` over a stream
of text deltas (a remote, OpenAI-compatible upstream)."""
