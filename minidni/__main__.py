"""`python -m minidni ...` runs the `minidni` command."""
from .cli import main

raise SystemExit(main())
