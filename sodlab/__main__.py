"""``python -m sodlab``: the command line (see ``sodlab.cli``)."""

from sodlab.cli import main

raise SystemExit(main())
