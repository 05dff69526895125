"""``python -m cds_service.cli``."""

import sys

from cds_service.cli.main import main

sys.exit(main())
