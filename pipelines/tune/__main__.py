"""``python -m pipelines.tune``: what ``salma tune`` runs."""

from pipelines.tune.driver import main

raise SystemExit(main())
