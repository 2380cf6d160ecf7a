"""The OpenAPI description served is the API as routed: the same paths, the same methods."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Route

from jobgraph.web import api
from tests.web.conftest import get, served


def test_the_description_lists_exactly_the_routes(tmp_path: Path) -> None:
    with served(f"sqlite:///{tmp_path / 'store.db'}") as app:
        served_document = get(app, "/api/v1/openapi.json").json()
    assert served_document["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, item in served_document["paths"].items() for method in item}
    routed = {(route.path.replace("{attempt:int}", "{attempt}"), method) for route in api.routes()
              if isinstance(route, Route) for method in route.methods or () if method != "HEAD"}
    assert described == routed
    for path, item in served_document["paths"].items():
        for operation in item.values():
            named = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert named == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
    schemas = served_document["components"]["schemas"]
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(served_document)}
    assert refs <= set(schemas)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
