import sys

from .cli import main

# The guard matters: vLLM starts its engine processes with multiprocessing's "spawn", which
# imports this module again in each child.
if __name__ == "__main__":
    sys.exit(main())
