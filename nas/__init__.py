"""shiftaddaug: find and train tiny multiplication-free neural networks.

The package is ``nas``; the distribution is ``shiftaddaug``.
"""

__version__ = "0.1.0"
