"""``python -m tenantvm``: the same as the ``tenantvm`` command."""

import sys

from tenantvm.cli import main

sys.exit(main())
