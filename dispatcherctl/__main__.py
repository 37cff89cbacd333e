"""`python -m dispatcherctl` = `dispatcherctl`."""

from shared.console import dispatcherctl

dispatcherctl()
