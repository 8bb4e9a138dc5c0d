"""`strife chaos`: a Jepsen-style bank test of a real cluster under faults.

A cluster (balancer, banks, gateways) runs as real processes, each in its
own network namespace when the machine allows it; simulated customers pay
each other through `strife.client` with its outbox while a nemesis kills,
pauses and partitions processes and sends calls with short deadlines or
cancels them. At quiescence the checker reads every ledger and outbox and
checks the history per intent (see docs/chaos.md).
"""
