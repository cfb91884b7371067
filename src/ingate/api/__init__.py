"""The OpenAI-compatible surface: what a request may say (schema) and how an answer is written
(openai). The app that serves them, with its routes, keys and queue, is ingate.server."""
