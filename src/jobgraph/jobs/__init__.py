"""Job programs shipped with jobgraph, runnable as `python -m jobgraph.jobs.NAME`."""
