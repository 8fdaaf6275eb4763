"""``genrec scaling``: a grid of model sizes and budgets, quality against training compute."""

FIT_METRICS = ("ndcg@10", "hr@10", "hr@100")  # fitted per model, split and protocol
