#!/usr/bin/env bash
# Usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# env: GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (""), PYTHON (python),
#      SIGNAL (USR1@90): Slurm's early warning before the time limit, to every rank, which
#        saves a checkpoint at the end of its iteration and exits with 75 (empty: none);
#      REQUEUE (unset): 1 submits a batch job (sbatch) instead of running srun here: on the
#        warning, or SIGTERM at preemption, the ranks save and the job requeues itself, and
#        every start of it resumes from the newest checkpoint. Its output is appended to
#        WORK_DIR/slurm-JOBID.out; SBATCH_ARGS ("") are passed to sbatch.
# One task per GPU; MASTER_ADDR/PORT come from Slurm (mmengine's slurm launcher).

set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
SIGNAL=${SIGNAL-USR1@90}
PY_ARGS=${@:5}
PYTHON=${PYTHON:-python}
TOOLS=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$TOOLS/..":$PYTHONPATH

if [ "${REQUEUE:-0}" = 1 ]; then
    mkdir -p "${WORK_DIR}"
    TRAIN=$(printf ' %q' "$PYTHON" -u "$TOOLS/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
        --launcher=slurm "${@:5}")  # quoted for the batch script
    # Slurm runs this script again from the top at each requeue; a restart adds a bare --resume
    # last, which wins over any earlier --resume (argparse keeps the last).
    exec sbatch --parsable --requeue --open-mode=append \
        -p ${PARTITION} \
        --job-name=${JOB_NAME} \
        --gres=gpu:${GPUS_PER_NODE} \
        --ntasks=${GPUS} \
        --ntasks-per-node=${GPUS_PER_NODE} \
        --cpus-per-task=${CPUS_PER_TASK} \
        ${SIGNAL:+--signal=${SIGNAL}} \
        --output="${WORK_DIR}/slurm-%j.out" \
        ${SBATCH_ARGS} <<EOF
#!/usr/bin/env bash
# preemption's SIGTERM reaches this shell too: wait for the ranks to save instead of dying
trap 'echo "slurm_train.sh: SIGTERM, waiting for the ranks to save"' TERM
RESUME=""
[ "\${SLURM_RESTART_COUNT:-0}" -gt 0 ] && RESUME=--resume
START=\$(date +%s)
srun --kill-on-bad-exit=1 ${SRUN_ARGS}${TRAIN} \$RESUME
rc=\$?
# the ranks saved on the signal (their record, not srun's status: srun may report the last rank
# killed by --kill-on-bad-exit after the first exited 75): back in the queue, to resume
RECORD=$(printf '%q' "${WORK_DIR}/preempted.json")
if [ -f \$RECORD ] && [ \$(stat -c %Y \$RECORD) -ge \$START ]; then
    scontrol requeue \$SLURM_JOB_ID
fi
exit \$rc
EOF
fi

# exec: srun takes this pid, so a signal to it reaches srun, which passes it on to the job step.
exec srun -p ${PARTITION} \
    --job-name=${JOB_NAME} \
    --gres=gpu:${GPUS_PER_NODE} \
    --ntasks=${GPUS} \
    --ntasks-per-node=${GPUS_PER_NODE} \
    --cpus-per-task=${CPUS_PER_TASK} \
    --kill-on-bad-exit=1 \
    ${SIGNAL:+--signal=${SIGNAL}} \
    ${SRUN_ARGS} \
    ${PYTHON} -u ${TOOLS}/train.py ${CONFIG} --work-dir=${WORK_DIR} --launcher="slurm" ${PY_ARGS}
