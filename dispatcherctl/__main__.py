"""`python -m dispatcherctl` = `dispatcherctl`."""

from dispatcherctl.cli import main

main(prog_name="dispatcherctl")
