"""The application layer the CLI and the web share: it imports neither typer, rich nor the web stack."""
