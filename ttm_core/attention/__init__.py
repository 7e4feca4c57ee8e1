"""Through-The-Mask masked attention (see docs/ATTENTION.md)."""
