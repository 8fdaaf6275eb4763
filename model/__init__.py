"""Models: HSTU, SASRec and most-popular baselines, losses, metrics and retrieval."""
