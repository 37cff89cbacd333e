"""`python -m dispatcher`: the `dispatcher` console script (worker processes start this way)."""

from dispatcher.cli import main

main(prog_name="dispatcher")
