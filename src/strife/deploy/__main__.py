"""`python -m strife.deploy`: the `strife deploy` commands (the image's Job runs this)."""

from strife.deploy.cli import deploy

deploy()
