"""`python -m planflow.cli ...`: the `planflow` command, without its console script."""

from planflow.cli import main

main()
