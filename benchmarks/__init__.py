"""Benchmarks of the pack (not tests): ``python -m benchmarks <subcommand>``; see ``__main__``."""
