"""`python -m service.cli ...`: the `triage` command where its console script is not on PATH."""

from service.cli import app

app(prog_name="triage")
