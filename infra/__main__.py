"""``python -m infra up|down|status [--json]`` — same as ``skewscope infra ...``."""

from infra.cli import main

raise SystemExit(main())
