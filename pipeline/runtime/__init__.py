"""Process-wide infrastructure every command shares: CPU threads, signals, the garbage collector, run locks."""
