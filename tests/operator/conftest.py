"""The operator suites import their builders from op_helpers.py beside this file (import-mode=importlib
puts no test folder on sys.path; this folder must not become a package named `operator`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
