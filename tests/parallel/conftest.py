"""Make the local helpers (sp_tiny_model) importable under pytest's importlib import mode; the
torchrun worker script imports them from its own directory the same way."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
