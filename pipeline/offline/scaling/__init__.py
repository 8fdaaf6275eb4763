"""``genrec scaling``: a grid of model sizes and budgets, quality against training compute."""
