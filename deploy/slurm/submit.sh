#!/usr/bin/env bash
# Submit a sweep to Slurm: the set-up step, an array of TASKS workers (one GPU each) once it succeeded, and
# the finish step once every task has ended.
#
#   export SWEEP_STORAGE=postgresql://alex@DB_HOST:5432/optuna PGPASSWORD=... MLFLOW_TRACKING_URI=http://HOST:5000
#   deploy/slurm/submit.sh search_spaces/cifar100.yaml 8 [more sweep flags, e.g. --epochs 20]
#
# Run it from the repository (the jobs start there) with the project's virtual environment active: sbatch
# passes this environment on to the jobs. Partition, account, time limit: the usual SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_TIMELIMIT variables.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG.yaml TASKS [sweep flags ...]" >&2
    exit 2
fi
export SWEEP_CONFIG=$1
tasks=$2
shift 2
export SWEEP_ARGS="$*"
: "${SWEEP_STORAGE:?set SWEEP_STORAGE to the shared study database, e.g. postgresql://alex@DB_HOST:5432/optuna}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the tracking server, e.g. http://TRACKING_HOST:5000}"
[ -f "$SWEEP_CONFIG" ] || { echo "no such file: $SWEEP_CONFIG" >&2; exit 2; }
case $tasks in ''|*[!0-9]*|0) echo "TASKS must be a positive number (got $tasks)" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p slurm-logs  # Slurm does not create the folder of --output
init=$(sbatch --parsable "$here/init.sbatch")
workers=$(sbatch --parsable --dependency="afterok:$init" --array="0-$((tasks - 1))" "$here/sweep.sbatch")
finish=$(sbatch --parsable --dependency="afterany:$workers" "$here/finish.sbatch")
echo "set-up job $init; workers $workers (array of $tasks, one GPU each); finish job $finish; logs in slurm-logs/"
echo "$init $workers $finish" > slurm-logs/last-submission
