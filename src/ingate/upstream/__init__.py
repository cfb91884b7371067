"""Governing remote, OpenAI-compatible upstreams: the models file, the client, the TEXT-mode core."""
