"""Measure: the HTTP clients, the load generator, prompts, tokenizers and the sweep over load points."""
