"""`python -m dispatcher.ctl` = `dispatcherctl`."""

from dispatcher.ctl.cli import main

main(prog_name="dispatcherctl")
