"""``python -m etpmitm``: the same administration command as ``etpmitm``."""

from etpmitm.cli import main

raise SystemExit(main())
