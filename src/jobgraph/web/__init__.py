"""The web page and the HTTP API over the store (Starlette; imported only by `jobgraph web` and `serve --http`)."""
