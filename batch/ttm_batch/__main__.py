"""`python -m ttm_batch` runs the `ttm-batch` command."""

import sys

from .cli import main

sys.exit(main())
