"""`python -m strife.cluster up|status|down` (also `strife cluster ...`)."""

from strife.program import launcher

launcher("strife.cluster.cli:cluster")()
