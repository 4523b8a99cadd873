"""`python -m scripts.dev.localgw`: the local API Gateway for serverless.yml's functions."""

import sys

from scripts.dev.localgw.server import main

if __name__ == "__main__":
    sys.exit(main())
