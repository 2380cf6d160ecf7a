"""Pipelines written out for another engine to run natively (Snowflake's task graphs), as scripts a person reviews."""
