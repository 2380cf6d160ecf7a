"""The SQLite schema at version 0006, exactly as the migrations leave it: a new SQLite store is made from it.

Running every migration on a new store costs a first run about 0.2 s (Alembic's import, and a table
rebuild per batch migration); these statements make the same tables, indexes and views in one
transaction. tests/store/test_migrations.py checks that a store made from them has exactly the
`sqlite_master` and the version stamp the migrations produce; when a migration is added, that test
fails and prints the statements to put here. Existing stores, and PostgreSQL, are migrated.
"""

from __future__ import annotations

from collections.abc import Callable

SQLITE_SCHEMA_VERSION = "0006"
"""The migration these statements stand for."""

SQLITE_SCHEMA = (
    (
        'CREATE TABLE alembic_version (\n'
        '\tversion_num VARCHAR(32) NOT NULL, \n'
        '\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n'
        ')'
    ),
    (
        'CREATE TABLE runs (\n'
        '\trun_id VARCHAR(36) NOT NULL, \n'
        '\tpipeline VARCHAR(255) NOT NULL, \n'
        '\tstate VARCHAR(16) NOT NULL, \n'
        '\trun_attempt INTEGER NOT NULL, \n'
        '\tstarted_at DATETIME NOT NULL, \n'
        '\tscheduled_time DATETIME NOT NULL, \n'
        '\tfinished_at DATETIME, \n'
        '\tsnapshot TEXT NOT NULL, \n'
        '\towner VARCHAR(300), "trigger" VARCHAR(16), pipeline_version VARCHAR(64), '
        'cancel_requested_at DATETIME, cancel_requested_by VARCHAR(300), params TEXT, selection '
        'TEXT, \n'
        '\tPRIMARY KEY (run_id)\n'
        ')'
    ),
    (
        'CREATE TABLE pipelines (\n'
        '\tname VARCHAR(255) NOT NULL, \n'
        '\tversion VARCHAR(64) NOT NULL, \n'
        '\tstate VARCHAR(16) NOT NULL, \n'
        '\tschedule VARCHAR(255), \n'
        '\tanchor DATETIME NOT NULL, \n'
        '\tnext_fire_at DATETIME, \n'
        '\tfailures_in_row INTEGER NOT NULL, \n'
        '\tdeployed_at DATETIME NOT NULL, \n'
        '\tnote TEXT, \n'
        '\tPRIMARY KEY (name)\n'
        ')'
    ),
    (
        'CREATE TABLE pipeline_versions (\n'
        '\tname VARCHAR(255) NOT NULL, \n'
        '\tversion VARCHAR(64) NOT NULL, \n'
        '\tsnapshot TEXT NOT NULL, \n'
        '\tsource TEXT NOT NULL, \n'
        '\tcreated_at DATETIME NOT NULL, \n'
        '\tPRIMARY KEY (name, version)\n'
        ')'
    ),
    (
        'CREATE TABLE fires (\n'
        '\tid INTEGER NOT NULL, \n'
        '\tpipeline VARCHAR(255) NOT NULL, \n'
        '\tscheduled_time DATETIME NOT NULL, \n'
        '\taction VARCHAR(16) NOT NULL, \n'
        '\trun_id VARCHAR(36), \n'
        '\tnote TEXT, \n'
        '\tat DATETIME NOT NULL, \n'
        '\tPRIMARY KEY (id)\n'
        ')'
    ),
    (
        'CREATE INDEX ix_fires_pipeline ON fires (pipeline)'
    ),
    (
        'CREATE TABLE leases (\n'
        '\tname VARCHAR(64) NOT NULL, \n'
        '\tholder VARCHAR(300) NOT NULL, \n'
        '\texpires_at DATETIME NOT NULL, \n'
        '\tPRIMARY KEY (name)\n'
        ')'
    ),
    (
        'CREATE TABLE "task_runs" (\n'
        '\trun_id VARCHAR(36) NOT NULL, \n'
        '\ttask VARCHAR(255) NOT NULL, \n'
        '\trun_attempt INTEGER NOT NULL, \n'
        '\tstate VARCHAR(16) NOT NULL, \n'
        '\tattempts INTEGER NOT NULL, \n'
        '\tpool VARCHAR(255) NOT NULL, \n'
        '\timage TEXT NOT NULL, \n'
        '\tpredecessors TEXT NOT NULL, \n'
        '\tis_finalizer BOOLEAN NOT NULL, \n'
        '\tstarted_at DATETIME, \n'
        '\tfinished_at DATETIME, \n'
        '\tduration_secs FLOAT, \n'
        '\treturn_value TEXT, \n'
        '\terror_message TEXT, item TEXT, \n'
        '\tCONSTRAINT pk_task_runs PRIMARY KEY (run_id, task, run_attempt), \n'
        '\tCONSTRAINT fk_task_runs_run FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE '
        'CASCADE\n'
        ')'
    ),
    (
        'CREATE TABLE "attempts" (\n'
        '\tid INTEGER NOT NULL, \n'
        '\trun_id VARCHAR(36) NOT NULL, \n'
        '\ttask VARCHAR(255) NOT NULL, \n'
        '\tattempt INTEGER NOT NULL, \n'
        '\trun_attempt INTEGER NOT NULL, \n'
        '\tstatus VARCHAR(16) NOT NULL, \n'
        '\texit_code INTEGER, \n'
        '\terror TEXT, \n'
        '\tlog_path TEXT NOT NULL, \n'
        '\tstarted_at DATETIME NOT NULL, \n'
        '\tfinished_at DATETIME, \n'
        '\tduration_secs FLOAT, \n'
        '\tcreated_date DATETIME NOT NULL, runner VARCHAR(32), backend_ref VARCHAR(255), \n'
        '\tPRIMARY KEY (id), \n'
        '\tCONSTRAINT uq_attempts_run_task_attempt UNIQUE (run_id, task, attempt), \n'
        '\tCONSTRAINT fk_attempts_task_run FOREIGN KEY(run_id, task, run_attempt) REFERENCES '
        '"task_runs" (run_id, task, run_attempt) ON DELETE CASCADE\n'
        ')'
    ),
    (
        'CREATE VIEW jobs_run_stats AS SELECT runs.pipeline AS root_task_name, task_runs.task AS '
        "task_name, CASE WHEN (task_runs.state = 'CANCELLED') THEN 'CANCELLED' ELSE "
        'last_attempt.status END AS job_status, task_runs.run_id AS graph_run_id, '
        "runs.scheduled_time AS graph_start_time, coalesce(last_attempt.error, '') AS errors, "
        'task_runs.finished_at AS created_date, task_runs.run_attempt AS graph_run_attempt, '
        'last_attempt.attempt AS attempt, last_attempt.exit_code, task_runs.duration_secs \n'
        'FROM task_runs JOIN runs ON task_runs.run_id = runs.run_id JOIN attempts AS last_attempt '
        'ON last_attempt.run_id = task_runs.run_id AND last_attempt.task = task_runs.task AND '
        'last_attempt.run_attempt = task_runs.run_attempt AND NOT (EXISTS (SELECT * \n'
        'FROM attempts AS later_attempt \n'
        'WHERE later_attempt.run_id = last_attempt.run_id AND later_attempt.task = '
        'last_attempt.task AND later_attempt.run_attempt = last_attempt.run_attempt AND '
        'later_attempt.attempt > last_attempt.attempt)) \n'
        "WHERE task_runs.state IN ('CANCELLED', 'FAILED', 'SKIPPED', 'SUCCEEDED') AND "
        "last_attempt.status != 'RUNNING'"
    ),
    (
        'CREATE VIEW task_logging_stats AS SELECT task_runs.run_id AS graph_run_group_id, '
        "task_runs.task AS name, task_runs.state, task_runs.return_value, strftime('%Y%m%d%H%M%S', "
        "task_runs.started_at) AS query_start_time, strftime('%Y%m%d%H%M%S', "
        'task_runs.finished_at) AS completed_time, CAST(round(task_runs.duration_secs) AS INTEGER) '
        'AS duration_in_secs, task_runs.error_message, task_runs.run_attempt AS graph_run_attempt \n'
        'FROM task_runs \n'
        "WHERE task_runs.state IN ('CANCELLED', 'FAILED', 'SKIPPED', 'SUCCEEDED') AND "
        'task_runs.is_finalizer IS 0'
    ),
    (
        'CREATE VIEW job_attempts AS SELECT attempts.run_id AS graph_run_id, attempts.task AS '
        'task_name, attempts.attempt, attempts.status, attempts.exit_code, attempts.error, '
        'attempts.started_at AS start_time, attempts.finished_at AS end_time, '
        'attempts.duration_secs, attempts.run_attempt AS graph_run_attempt \n'
        'FROM attempts'
    ),
    (
        'CREATE INDEX ix_runs_started_at ON runs (started_at, run_id)'
    ),
    (
        'CREATE INDEX ix_runs_pipeline_started_at ON runs (pipeline, started_at, run_id)'
    ),
    (
        'CREATE INDEX ix_runs_state_started_at ON runs (state, started_at, run_id)'
    ),
    (
        'CREATE TABLE api_tokens (\n'
        '\ttoken_id VARCHAR(32) NOT NULL, \n'
        '\tname VARCHAR(255) NOT NULL, \n'
        '\tscope VARCHAR(16) NOT NULL, \n'
        '\ttoken_hash VARCHAR(64) NOT NULL, \n'
        '\tcreated_at DATETIME NOT NULL, \n'
        '\tlast_used_at DATETIME, \n'
        '\texpires_at DATETIME, \n'
        '\trevoked_at DATETIME, \n'
        '\tPRIMARY KEY (token_id), \n'
        '\tUNIQUE (token_hash)\n'
        ')'
    ),
    (
        'CREATE TABLE notifications (\n'
        '\tid INTEGER NOT NULL, \n'
        '\trun_id VARCHAR(36) NOT NULL, \n'
        '\tpipeline VARCHAR(255) NOT NULL, \n'
        '\tevent VARCHAR(32) NOT NULL, \n'
        '\ttask VARCHAR(255), \n'
        '\ttarget VARCHAR(255) NOT NULL, \n'
        '\tstate VARCHAR(16) NOT NULL, \n'
        '\ttries INTEGER NOT NULL, \n'
        '\terror TEXT, \n'
        '\tcreated_at DATETIME NOT NULL, \n'
        '\tfinished_at DATETIME, \n'
        '\tPRIMARY KEY (id), \n'
        '\tCONSTRAINT fk_notifications_run FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE '
        'CASCADE\n'
        ')'
    ),
    (
        'CREATE INDEX ix_notifications_run ON notifications (run_id)'
    ),
)
"""Each CREATE statement, in the order the migrations ran them (sqlite_master's text, verbatim)."""


def create_schema(execute: Callable[..., object]) -> None:
    """Make every table, index and view and stamp the version, with `execute(sql, parameters)` (a DBAPI
    cursor's or SQLAlchemy's `exec_driver_sql`), in the caller's transaction."""
    for statement in SQLITE_SCHEMA:
        execute(statement, ())
    execute("INSERT INTO alembic_version (version_num) VALUES (?)", (SQLITE_SCHEMA_VERSION,))
