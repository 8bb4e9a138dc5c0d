from strife.chaos.cli import chaos

chaos(prog_name="python -m strife.chaos")
