"""The online trainer: the test-then-train loop and what it persists (checkpoints, published versions)."""
