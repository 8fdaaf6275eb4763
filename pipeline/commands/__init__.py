"""Subcommands of the genrec CLI, one module per group."""
