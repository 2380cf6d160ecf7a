-- jobgraph export snowflake pipeline.yaml: pipeline root_task as a Snowflake task graph (root task "ROOT_TASK").

-- Run it in the database and schema the graph belongs in; running it again replaces the tasks and keeps the logging tables' rows.

-- WARNING: per-job retry counts (0, 1, 2) cannot be expressed: Snowflake retries the whole graph run's failed tasks, up to TASK_AUTO_RETRY_ATTEMPTS = 2 times for every job
-- WARNING: retry delay and backoff cannot be expressed (Snowflake retries a graph at once): t_myjob_3, t_myjob_4

-- ---- Logging tables (the seed's, kept across runs)
CREATE TABLE IF NOT EXISTS "JOBS_RUN_STATS" (root_task_name STRING, task_name STRING, job_status STRING, graph_run_id STRING, graph_start_time TIMESTAMP_LTZ, errors STRING, created_date DATETIME DEFAULT CURRENT_TIMESTAMP());
CREATE TABLE IF NOT EXISTS "TASK_LOGGING_STATS" (graph_run_group_id VARCHAR, name VARCHAR, state VARCHAR, return_value VARCHAR, query_start_time VARCHAR, completed_time VARCHAR, duration_in_secs INT, error_message VARCHAR);

-- ---- The root task: the schedule, overlap, suspension and graph retries
-- A task graph is changed only while its root task is suspended.
ALTER TASK IF EXISTS "ROOT_TASK" SUSPEND;
-- The file sets no suspend_after_failures: 0 keeps Snowflake from suspending the graph (its default is 10).
-- Snowflake retries a failed graph run (its failed tasks and what follows them), not a job: TASK_AUTO_RETRY_ATTEMPTS is the most retries any job asks for (2).
CREATE OR REPLACE TASK "ROOT_TASK"
  USER_TASK_MANAGED_INITIAL_WAREHOUSE_SIZE = 'XSMALL'
  SCHEDULE = '59 MINUTE'
  ALLOW_OVERLAPPING_EXECUTION = FALSE
  SUSPEND_TASK_AFTER_NUM_FAILURES = 0
  COMMENT = 'jobgraph pipeline root_task: root task'
  TASK_AUTO_RETRY_ATTEMPTS = 2
AS
SELECT CURRENT_TIMESTAMP();

-- ---- One task per job: its SPCS job service, run synchronously, after its predecessors
-- No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) applies.
CREATE OR REPLACE TASK "T_MYJOB_1"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_1'
  AFTER "ROOT_TASK"
AS
EXECUTE JOB SERVICE IN COMPUTE POOL "PR_STD_POOL_XS"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_1'
  FROM SPECIFICATION $$spec:
  containers:
  - name: main
    image: /tutorial_db/data_schema/tutorial_repository/my_job_image:latest
    args:
    - --query=select current_time() as time,'hello'
    - --result_table=results_1
    env:
      JOBGRAPH_PIPELINE: root_task
      JOBGRAPH_TASK: t_myjob_1
  logExporters:
    eventTableConfig:
      logLevel: INFO
$$;
-- No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) applies.
CREATE OR REPLACE TASK "T_MYJOB_2"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_2'
  AFTER "ROOT_TASK"
AS
EXECUTE JOB SERVICE IN COMPUTE POOL "PR_STD_POOL_S"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_2'
  FROM SPECIFICATION $$spec:
  containers:
  - name: main
    image: /tutorial_db/data_schema/tutorial_repository/my_job_image:latest
    args:
    - --query=select current_time() as time,'hello'
    - --result_table=results_2
    env:
      JOBGRAPH_PIPELINE: root_task
      JOBGRAPH_TASK: t_myjob_2
  logExporters:
    eventTableConfig:
      logLevel: INFO
$$;
-- jobgraph: 2 retries, 1 s apart; Snowflake: the root task's TASK_AUTO_RETRY_ATTEMPTS.
-- No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) applies.
CREATE OR REPLACE TASK "T_MYJOB_3"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_3'
  AFTER "T_MYJOB_2"
AS
EXECUTE JOB SERVICE IN COMPUTE POOL "PR_STD_POOL_S"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_3'
  FROM SPECIFICATION $$spec:
  containers:
  - name: main
    image: /tutorial_db/data_schema/tutorial_repository/my_job_image:latest
    args:
    - --query=select current_time() as time,'hello'
    - --result_table=results_3
    env:
      JOBGRAPH_PIPELINE: root_task
      JOBGRAPH_TASK: t_myjob_3
  logExporters:
    eventTableConfig:
      logLevel: INFO
$$;
-- jobgraph: 1 retry, 1 s apart; Snowflake: the root task's TASK_AUTO_RETRY_ATTEMPTS.
-- No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) applies.
CREATE OR REPLACE TASK "T_MYJOB_4"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_4'
  AFTER "T_MYJOB_2"
AS
EXECUTE JOB SERVICE IN COMPUTE POOL "PR_STD_POOL_XS"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_4'
  FROM SPECIFICATION $$spec:
  containers:
  - name: main
    image: /tutorial_db/data_schema/tutorial_repository/my_job_image:latest
    args:
    - --query=select current_time() as time,'hello'
    - --result_table=results_4
    env:
      JOBGRAPH_PIPELINE: root_task
      JOBGRAPH_TASK: t_myjob_4
  logExporters:
    eventTableConfig:
      logLevel: INFO
$$;
-- No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) applies.
CREATE OR REPLACE TASK "T_MYJOB_5"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_5'
  AFTER "T_MYJOB_1"
AS
EXECUTE JOB SERVICE IN COMPUTE POOL "PR_STD_POOL_XS"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_5'
  FROM SPECIFICATION $$spec:
  containers:
  - name: main
    image: /tutorial_db/data_schema/tutorial_repository/my_job_image:latest
    args:
    - --query=select current_time() as time,'hello'
    - --result_table=results_5
    env:
      JOBGRAPH_PIPELINE: root_task
      JOBGRAPH_TASK: t_myjob_5
  logExporters:
    eventTableConfig:
      logLevel: INFO
$$;
-- No timeout in the file: Snowflake's default task timeout (USER_TASK_TIMEOUT_MS, one hour) applies.
CREATE OR REPLACE TASK "T_MYJOB_6"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_6'
  AFTER "T_MYJOB_3", "T_MYJOB_4", "T_MYJOB_5"
AS
EXECUTE JOB SERVICE IN COMPUTE POOL "PR_STD_POOL_S"
  COMMENT = 'jobgraph pipeline root_task, job t_myjob_6'
  FROM SPECIFICATION $$spec:
  containers:
  - name: main
    image: /tutorial_db/data_schema/tutorial_repository/my_job_image:latest
    args:
    - --query=select current_time() as time,'hello'
    - --result_table=results_6
    env:
      JOBGRAPH_PIPELINE: root_task
      JOBGRAPH_TASK: t_myjob_6
  logExporters:
    eventTableConfig:
      logLevel: INFO
$$;

-- ---- The finalizer: logs every task of the run into the logging tables
-- Snowflake Scripting in EXECUTE IMMEDIATE, so SnowSQL and Snowsight both read it as one statement.
CREATE OR REPLACE TASK "GET_GRAPH_STATS"
  USER_TASK_MANAGED_INITIAL_WAREHOUSE_SIZE = 'XSMALL'
  COMMENT = 'jobgraph pipeline root_task: logs every task of the run'
  FINALIZE = "ROOT_TASK"
AS
EXECUTE IMMEDIATE $$
DECLARE
  root_task_id VARCHAR;
  run_group_id VARCHAR;
  graph_start TIMESTAMP_LTZ;
BEGIN
  SELECT SYSTEM$TASK_RUNTIME_INFO('CURRENT_ROOT_TASK_UUID'), SYSTEM$TASK_RUNTIME_INFO('CURRENT_TASK_GRAPH_RUN_GROUP_ID'),
         SYSTEM$TASK_RUNTIME_INFO('CURRENT_TASK_GRAPH_ORIGINAL_SCHEDULED_TIMESTAMP')::TIMESTAMP_LTZ
    INTO :root_task_id, :run_group_id, :graph_start;
  INSERT INTO "TASK_LOGGING_STATS" (graph_run_group_id, name, state, return_value, query_start_time, completed_time, duration_in_secs, error_message) SELECT graph_run_group_id, name, state, return_value, TO_VARCHAR(query_start_time, 'YYYY-MM-DD HH24:MI:SS'), TO_VARCHAR(completed_time, 'YYYY-MM-DD HH24:MI:SS'), DATEDIFF('second', query_start_time, completed_time), error_message FROM TABLE(INFORMATION_SCHEMA.TASK_HISTORY(SCHEDULED_TIME_RANGE_START => :graph_start, SCHEDULED_TIME_RANGE_END => CURRENT_TIMESTAMP(), RESULT_LIMIT => 10000, ROOT_TASK_ID => :root_task_id)) WHERE graph_run_group_id = :run_group_id AND name <> 'GET_GRAPH_STATS';
  INSERT INTO "JOBS_RUN_STATS" (root_task_name, task_name, job_status, graph_run_id, graph_start_time, errors, created_date) SELECT 'ROOT_TASK', name, CASE state WHEN 'SUCCEEDED' THEN 'DONE' ELSE state END, graph_run_group_id, :graph_start, error_message, CURRENT_TIMESTAMP() FROM TABLE(INFORMATION_SCHEMA.TASK_HISTORY(SCHEDULED_TIME_RANGE_START => :graph_start, SCHEDULED_TIME_RANGE_END => CURRENT_TIMESTAMP(), RESULT_LIMIT => 10000, ROOT_TASK_ID => :root_task_id)) WHERE graph_run_group_id = :run_group_id AND name NOT IN ('ROOT_TASK', 'GET_GRAPH_STATS');
  RETURN 'logged';
END;
$$;

-- ---- Resume the graph (the root task last): it runs on its schedule, or by EXECUTE TASK
ALTER TASK "GET_GRAPH_STATS" RESUME;
-- Then, to run it at once: EXECUTE TASK "ROOT_TASK";
SELECT SYSTEM$TASK_DEPENDENTS_ENABLE('"ROOT_TASK"');

-- Teardown (the seed's drop_job_tasks()): `jobgraph export snowflake --teardown` prints it to run.
-- ALTER TASK IF EXISTS "ROOT_TASK" SUSPEND;
-- DROP TASK IF EXISTS "GET_GRAPH_STATS";
-- DROP TASK IF EXISTS "T_MYJOB_6";
-- DROP TASK IF EXISTS "T_MYJOB_5";
-- DROP TASK IF EXISTS "T_MYJOB_4";
-- DROP TASK IF EXISTS "T_MYJOB_3";
-- DROP TASK IF EXISTS "T_MYJOB_2";
-- DROP TASK IF EXISTS "T_MYJOB_1";
-- -- The logging tables jobs_run_stats and task_logging_stats are kept: drop them yourself once their rows are no longer needed.
-- DROP TASK IF EXISTS "ROOT_TASK";
