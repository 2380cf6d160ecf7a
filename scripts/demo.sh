#!/usr/bin/env bash
# Install jobgraph into .venv, then walk through the seed quickstart's story in demo-run/:
# run the graph, list it, read the two seed tables, simulate the failure of t_myjob_3, and retry.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
rm -rf demo-run && mkdir demo-run && cp examples/seed/jobconfig.json examples/seed/pipeline.yaml demo-run/
cd demo-run
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step jobgraph validate pipeline.yaml
step jobgraph graph pipeline.yaml
step jobgraph run pipeline.yaml
step jobgraph stats jobs_run_stats
step jobgraph stats task_logging_stats
echo; echo "# The seed's failure simulation: results_3 loses the column the job inserts into."
step python -m jobgraph.jobs.sql "--query=ALTER TABLE results_3 DROP COLUMN \"'hello'\""
step python -m jobgraph.jobs.sql "--query=ALTER TABLE results_3 ADD COLUMN createdate DATETIME"
step jobgraph run pipeline.yaml || echo "(exit code $?: a job failed, as the seed's story expects)"
step jobgraph stats jobs_run_stats --limit 4
run_id=$(python - <<'PY'
from jobgraph.store import Store
print(Store("sqlite:///.jobgraph/jobgraph.db").runs(1)[0].run_id)
PY
)
step jobgraph show "$run_id"
step jobgraph logs "$run_id" t_myjob_3
echo; echo "# Repair the table, then retry only what failed or was skipped (EXECUTE TASK ... RETRY LAST)."
step python -m jobgraph.jobs.sql "--query=ALTER TABLE results_3 ADD COLUMN \"'hello'\""
step python -m jobgraph.jobs.sql "--query=ALTER TABLE results_3 DROP COLUMN createdate"
step jobgraph retry "$run_id"
step jobgraph history
