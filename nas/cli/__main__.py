"""``python -m nas.cli VERB ...``: the same as the ``shiftaddaug`` command."""

import sys

from nas.cli import main

sys.exit(main())
