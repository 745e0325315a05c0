"""Training: SFT, the preference loop, shared-prefix completion log-probs and their caches."""
