"""Turning products into model inputs: preprocessing, labels, and the embedding cache."""
