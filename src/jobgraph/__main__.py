"""`python -m jobgraph` is the `jobgraph` command."""

from jobgraph.cli import main

main()
