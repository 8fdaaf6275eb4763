"""Offline training and full-ranking evaluation on a fixed log (``genrec train-offline``)."""
