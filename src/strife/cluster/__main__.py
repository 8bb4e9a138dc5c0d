"""`python -m strife.cluster up|status|down` (also `strife cluster ...`)."""

from strife.cluster.cli import cluster
from strife.program import entry

entry(cluster)()
