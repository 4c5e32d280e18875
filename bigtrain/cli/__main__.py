"""``python -m bigtrain.cli``: the ``bigtrain`` command."""

import sys

from bigtrain.cli import main

sys.exit(main())
