"""`python -m dispatcher`: the `dispatcher` console script (worker processes start this way)."""

from shared.console import dispatcher

dispatcher()
