"""Where the toolkit's own data files live (search spaces, zoo, hardware and lookup tables).

The toolkit is installed from a source checkout (``pip install -e .``), so these folders sit
next to the package: ``<repo>/search_spaces`` and ``<repo>/latency_tables``.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SEARCH_SPACES = REPO_ROOT / "search_spaces"
BASELINES = SEARCH_SPACES / "baselines"
LATENCY_TABLES = REPO_ROOT / "latency_tables"
RUNS = REPO_ROOT / "runs"
