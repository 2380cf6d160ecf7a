"""jobgraph's web page and HTTP API: a thin shell over the store and jobgraph.app (imported only by `jobgraph web`)."""
