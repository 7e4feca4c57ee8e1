"""ttm_core: the Through-The-Mask library behind the ComfyUI nodes.

Importable and testable without ComfyUI: it never imports comfy, folder_paths, server or
the pack's nodes (tests/test_layering.py enforces it). Devices, dtypes, paths and progress
callbacks come in as arguments. Importing it has no side effects.
"""

__version__ = "0.1.0"
