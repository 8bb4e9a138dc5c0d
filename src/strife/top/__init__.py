"""`strife top`: a live terminal view of a running cluster, from each process's /metrics.

`targets` finds the processes (a local cluster's state file, or addresses
given), `scrape` reads and parses their /metrics, `snapshot` turns two
scrapes into rates and per-process rows, and `render` draws them as plain
text or as a rich table. `cli` holds the command.
"""
