"""Reading lake files (CSV, MovieLens, Parquet, JSON Lines), their paths, and the synthetic generator."""
