"""``python -m ssdwb SUBCOMMAND ...`` is ``ssdwb SUBCOMMAND ...``: what Slurm jobs, torchrun and
the container call, with no console script needed."""

import sys

from ssdwb.cli import main

if __name__ == "__main__":
    sys.exit(main())
