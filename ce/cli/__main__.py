"""`python -m ce.cli`: the same as the `ce` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
