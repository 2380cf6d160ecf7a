"""The application layer: what the command line, the scheduler service and the web server do, without
their way of speaking (no typer, rich or web stack here). Messages to people go through callbacks
(reports.py), results come back as values. Each module is imported on its own, so loading one loads
no more than its job needs (`jobgraph run` on SQLite never loads SQLAlchemy).
"""
