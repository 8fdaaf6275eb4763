"""Subcommands of the genrec CLI, one module per group.

Every ``genrec`` call builds the whole parser, ``--help`` included, so these modules import
what a subcommand runs (torch, Beam, the trainer, the lake reader) inside the function that
runs it: ``genrec --help`` stays well under a second.
"""
