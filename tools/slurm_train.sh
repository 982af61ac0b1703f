#!/usr/bin/env bash
# Usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# env: GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (""), PYTHON (python),
#      SIGNAL (USR1@90): Slurm's early warning before the time limit, [R:][B:]SIG@SECONDS, on
#        which every rank saves a checkpoint at the end of its iteration and exits with 75
#        (PreemptionHook handles SIGUSR1 and SIGTERM; empty: no warning). B: (the batch shell alone) needs REQUEUE=1, whose batch
#        shell passes the signal on to the ranks;
#      REQUEUE (unset): 1 submits a batch job (sbatch) instead of running srun here: on the
#        warning the ranks save and the job requeues itself; on SIGTERM (scancel, a preemption)
#        they save and the job ends, unless Slurm requeues it. Its output is appended to
#        WORK_DIR/slurm-JOBID.out; SBATCH_ARGS ("") are passed to sbatch.
# A run resumes by itself (a bare --resume is added unless the arguments have one) where WORK_DIR
# holds the preemption record (preempted.json) of this CONFIG, or where Slurm restarts a requeued
# job and WORK_DIR has a checkpoint: however the job was requeued (REQUEUE=1, a batch script's
# own --requeue, scontrol requeue, PreemptMode=REQUEUE).
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

refuse() { set +x; echo "slurm_train.sh: $*" >&2; exit 2; }
if [ -n "$SIGNAL" ]; then
    [[ $SIGNAL =~ ^(R:)?(B:)?(SIG)?([A-Z][A-Z0-9]*|[0-9]+)@[0-9]+$ ]] || refuse \
        "SIGNAL=$SIGNAL: expected [R:][B:]SIG@SECONDS, e.g. SIGNAL=USR1@90, or SIGNAL= for none"
    SIG=${BASH_REMATCH[4]}
    [[ $SIG =~ ^(USR1|TERM|10|15)$ ]] || echo "slurm_train.sh: SIGNAL=$SIGNAL: the ranks save" \
        "on SIGTERM and SIGUSR1; PreemptionHook(signals=...) must name $SIG for this one" >&2
    if [[ $SIGNAL == *B:* ]] && [ "${REQUEUE:-0}" != 1 ]; then
        refuse "SIGNAL=$SIGNAL signals the batch shell alone, and srun has none to pass it on:" \
            "use SIGNAL=${SIGNAL/B:/} (every rank), or REQUEUE=1, whose batch shell passes it on"
    fi
fi

if [ "${REQUEUE:-0}" = 1 ]; then
    mkdir -p "${WORK_DIR}"
    # The batch job runs this script again without REQUEUE, at each start: the resume rule and
    # the srun line are the ones below. The job's own --signal reaches every step, so the step
    # gets none of its own; a B: signal reaches the batch shell, which passes it on to srun.
    STEP=$(printf ' %q' env REQUEUE=0 SIGNAL= bash "$TOOLS/slurm_train.sh" "$PARTITION" \
        "$JOB_NAME" "$CONFIG" "$WORK_DIR" "${@:5}")  # quoted for the batch script
    RECORD=$(printf '%q' "${WORK_DIR}/preempted.json")  # mmfame/runtime/protocol.py's records
    JOB_RECORD=$(printf '%q' "${WORK_DIR}/slurm_job.json")
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
START=\$(date +%s)
${STEP} &
STEP_PID=\$!
# preemption's SIGTERM reaches this shell too: wait for the ranks to save instead of dying;
# a signal for the batch shell alone (SIGNAL=B:...) goes on to srun, which passes it to the ranks
TERMINATED=false
trap 'TERMINATED=true; echo "slurm_train.sh: SIGTERM, waiting for the ranks to save"' TERM
trap 'kill -USR1 \$STEP_PID' USR1
wait \$STEP_PID; rc=\$?
while kill -0 \$STEP_PID 2>/dev/null; do wait \$STEP_PID; rc=\$?; done  # woken by a trap
# the ranks saved on the warning (their record, not srun's status: srun may report the last
# rank killed by --kill-on-bad-exit after the first exited 75): back in the queue, to resume.
# A SIGTERM (scancel, a preemption, the time limit) is Slurm's decision: saved, not requeued
# here (Slurm requeues where it means to: scontrol requeue, PreemptMode=REQUEUE).
REQUEUED=false
[ -f ${RECORD} ] && [ \$(stat -c %Y ${RECORD}) -ge \$START ] && ! \$TERMINATED && REQUEUED=true
printf '{"job": "%s", "restarts": %s, "returncode": %s, "requeued": %s, "start": %s, "end": %s}\\n' \\
    "\$SLURM_JOB_ID" "\${SLURM_RESTART_COUNT:-0}" \$rc \$REQUEUED \$START \$(date +%s) \\
    > ${JOB_RECORD}.tmp && mv ${JOB_RECORD}.tmp ${JOB_RECORD}
\$REQUEUED && scontrol requeue \$SLURM_JOB_ID
exit \$rc
EOF
fi

# resume a preempted or requeued run of this config (unless the arguments choose a checkpoint)
# (the rule and the record it reads: mmfame/runtime/protocol.py)
RESUME=""
if [[ " ${*:5} " != *" --resume"* ]] && [ -f "$WORK_DIR/last_checkpoint" ] && \
        "$PYTHON" "$TOOLS/../mmfame/runtime/protocol.py" resume "$WORK_DIR" "$CONFIG"; then
    RESUME=--resume
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
    ${PYTHON} -u ${TOOLS}/train.py ${CONFIG} --work-dir=${WORK_DIR} --launcher="slurm" ${PY_ARGS} \
    ${RESUME}
