"""``python -m cvae``: the ``cvae`` command (train, eval, export, data, app)."""
import sys

from .cli import main

sys.exit(main())
