"""jobgraph: run containerized jobs in parallel as a DAG from a config file, recorded like Snowflake task graphs."""

__version__ = "0.1.0"

__all__ = ["__version__"]
