"""Semantic admissibility: concept embeddings loaded once, token groups scored against them."""
