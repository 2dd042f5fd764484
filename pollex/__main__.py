"""`python -m pollex` works like the `pollex` command."""

from pollex.cli import main

raise SystemExit(main())
