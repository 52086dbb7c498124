"""``python -m attnkit``: the command line (what torchrun starts in each process of ``attnkit train --nproc N``)."""

import sys

from .cli import main

sys.exit(main())
