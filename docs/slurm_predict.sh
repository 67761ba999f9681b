#!/usr/bin/env bash
# cryoseg on a SLURM cluster: predict and pick a folder of micrographs as a job array, one shard per task.
#
#   sbatch --array=0-15 docs/slurm_predict.sh model/best.pt data/micrographs run1/
#
# Task i of an array of n runs `cryoseg predict ... --shard i/n` and then `cryoseg pick ... --shard i/n`:
# micrographs are split by the CRC-32 of their name, so every micrograph belongs to exactly one shard,
# whatever the order in which the files are listed, and the shards share one output folder:
#   OUT/probabilities/<name>.mrc        (+ <name>.json)   maps at the model's scale, from `predict`
#   OUT/picks/star/<name>.star, OUT/picks/box/<name>.box   coordinates in the original micrographs' pixels
#   OUT/picks/particles.shard-i-of-n.star                  all picks of shard i (RELION: import them together)
#   OUT/cryoseg-predict.shard-i-of-n.json, OUT/picks/cryoseg-pick.shard-i-of-n.json   what each task did
#   OUT/failures.shard-i-of-n.tsv, OUT/picks/failures.shard-i-of-n.tsv     the micrographs that failed, if any
# The array must start at 0 (shards are numbered from 0).
#
# Resuming: submit the same command again. Every task skips the micrographs whose outputs are complete
# (each file is written under a temporary name and renamed when complete) and does the rest, so a task
# killed by the time limit, a preemption or a node failure loses at most the micrograph in flight. To
# rerun only some tasks, keep the number of shards: SLURM_ARRAY_TASK_COUNT is the size of the array as
# submitted, so give N_SHARDS explicitly:
#   sbatch --array=3,7 --export=ALL,N_SHARDS=16 docs/slurm_predict.sh model/best.pt data/micrographs run1/
# Keep the same n and the same settings for every task of one OUT: a task rerun with other settings is
# refused (its record names the difference), another split whose outputs exist is refused, but each task
# checks only its own shard's record: tasks submitted with different settings are not caught.
# --force (in PREDICT_ARGS / PICK_ARGS) redoes a shard, replacing only the files cryoseg wrote.
# Exit codes: 0 all done, 1 some micrographs failed (listed in the failures files; the others are done),
# 2 an error (bad option, unreadable model, full disk: nothing more is done). A task that returns 1 is
# marked FAILED by SLURM; look at the failures files, fix or remove those micrographs, and resubmit.
#
# GPU or CPU: the #SBATCH lines below ask for one GPU per task. For CPU nodes, drop --gres and give the
# task more CPUs (cryoseg uses every CPU it is given: --threads defaults to all available), e.g.:
#   #SBATCH --cpus-per-task=16
#   #SBATCH --mem=32G
#   (and no --gres; add PREDICT_ARGS="--device cpu" if the nodes have GPUs you must not use)
# A GPU task is limited by reading and decoding micrographs as much as by the network: give it a few
# CPUs. Size the array so that one task takes from minutes to an hour: a failed task then costs little,
# and the queue sees short jobs.
#
# Why shards and not torchrun for inference: every micrograph is predicted and picked on its own, with no
# gradient to exchange, so n independent tasks scale linearly, start as soon as any GPU is free, fail and
# resume one by one, and need no network between nodes. torchrun (one process per GPU, a rendezvous, all
# processes started and stopped together) pays for none of that here. Use torchrun to TRAIN on several
# GPUs, where the gradients are averaged at every step (DistributedDataParallel; rank 0 writes):
#   #SBATCH --nodes=1 --gres=gpu:4 --cpus-per-task=32
#   torchrun --standalone --nproc_per_node 4 -m cryoseg.cli train --data lab/train --val lab/val --out model/
# On several nodes: srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 4 --rdzv_backend c10d
#   --rdzv_endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500" -m cryoseg.cli train ...
# and one GPU node can serve several inference shards at once: --gres=gpu:1 per task, several tasks per node.
#
#SBATCH --job-name=cryoseg-predict
#SBATCH --output=cryoseg-%A_%a.log
#SBATCH --time=02:00:00
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --requeue
#SBATCH --open-mode=append

set -euo pipefail

MODEL=${1:-${MODEL:?usage: sbatch --array=0-N docs/slurm_predict.sh MODEL MICROGRAPHS OUT}}
MICS=${2:-${MICS:?micrograph folder missing}}
OUT=${3:-${OUT:?output folder missing}}
I=${SLURM_ARRAY_TASK_ID:?run me as a job array: sbatch --array=0-N ...}
N=${N_SHARDS:-${SLURM_ARRAY_TASK_COUNT:?set N_SHARDS (the number of shards) when SLURM_ARRAY_TASK_COUNT is not set}}
CRYOSEG=${CRYOSEG:-cryoseg}             # e.g. "python -m cryoseg.cli" or a container's command
PREDICT_ARGS=${PREDICT_ARGS:-}          # e.g. "--pixel-size 1.06 --crf gpu", "--device cpu", "--force"
PICK_ARGS=${PICK_ARGS:-}                # e.g. "--diameter-a 150 --formats star,box,csv", "--threshold 0.6"
# Software: load what your site needs, e.g.
#   module load cuda/12.4; source ~/venvs/cryoseg/bin/activate
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}

echo "cryoseg shard $I/$N on $(hostname): $MICS -> $OUT" >&2

# 1. probability maps of this shard's micrographs. Exit code 1 (some micrographs failed) still picks the others.
rc=0
# shellcheck disable=SC2086  # the ARGS are lists of options: split them on spaces
$CRYOSEG predict --model "$MODEL" --data "$MICS" --out "$OUT" --shard "$I/$N" --quiet $PREDICT_ARGS || rc=$?
if [ "$rc" -gt 1 ]; then
    echo "cryoseg predict failed (exit $rc) for shard $I/$N; nothing picked" >&2
    exit "$rc"
fi

# 2. picks from those maps: the same names, hence the same shard
rc_pick=0
# shellcheck disable=SC2086
$CRYOSEG pick --probs "$OUT/probabilities" --out "$OUT/picks" --shard "$I/$N" --quiet $PICK_ARGS || rc_pick=$?
exit $(( rc > rc_pick ? rc : rc_pick ))
