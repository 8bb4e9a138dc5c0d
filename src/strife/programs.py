"""The console scripts (`[project.scripts]`): one launcher per Strife program.

Nothing here imports gRPC: each launcher claims its process first and only
then loads its command (`strife.program.launcher`).
"""

from strife.program import launcher

__all__ = ["balancer", "bank", "bank_replica", "gateway", "loadgen", "strife"]

strife = launcher("strife.cli:main")
bank = launcher("strife.bank.main:main")
bank_replica = launcher("strife.bft.replica_main:main")
gateway = launcher("strife.gateway.main:main")
balancer = launcher("strife.balancer.main:main")
loadgen = launcher("strife.loadgen.cli:main")
