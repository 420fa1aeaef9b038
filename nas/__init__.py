"""shiftaddaug: find and train tiny multiplication-free neural networks.

The package is ``nas``; the distribution is ``shiftaddaug``. The Python API (``nas.api``):

    import nas

    result = nas.search(budget="0.02mJ")      # the whole job; result.model is the exported TargetNet
    result = nas.train(model="mbv2-tiny", op="add", epochs=10)
    result = nas.load("runs/<dir>")            # a finished run's TargetNet, arch, cost, summary
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas._version import __version__

if TYPE_CHECKING:
    from nas.api import Result


def search(budget: str | None = None, **kwargs: Any) -> Result:
    """Run a whole search and return its exported TargetNet (``nas.api.search``)."""
    from nas.api import search as run

    return run(budget, **kwargs)


def train(model: str | None = None, **kwargs: Any) -> Result:
    """Train one TargetNet and return it exported (``nas.api.train``)."""
    from nas.api import train as run

    return run(model, **kwargs)


def load(run_dir: str | Path) -> Result:
    """A finished run's exported TargetNet, arch, cost and summary (``nas.api.load``)."""
    from nas.api import load as run

    return run(run_dir)


__all__ = ["__version__", "load", "search", "train"]
