#!/bin/bash
# The CPU rank study (docs/RANK.md): 12 random genotypes of the BN-NAS row of search_spaces/cpu.yaml,
# the searched genotypes of the given search runs, and BN, retrained 150 steps (after 50 pre-training
# steps per encoder) as Ray Tune trials, three at a time, on a Ray instance of its own.
# usage, from the repository root: bash benchmarks/studies/rank_cpu.sh runs/rank/search_seed{0,1,2} [-- EXTRA ARGS]
SEARCHED=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do SEARCHED+=("$1"); shift; done; shift
PY=${PYTHON:-.venv/bin/python}
OMP_NUM_THREADS=1 nice -n 10 "$PY" - "$@" <<PYEOF
import os, sys
import ray
ray.init(address="local", num_cpus=3, include_dashboard=False, _temp_dir="/tmp/ray_rank_cpu",
         runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                   "PYTHONPATH": os.getcwd()}})
from nasfe.cli import main
code = main(["rank", "--space", "search_spaces/cpu.yaml",
             "--set", "model.use_classifier=false", "--set", "model.use_identity=false",
             "--set", "loss.lambda_per=0", "--set", "loss.lambda_iden=0",
             "--set", "retrain.pretrain_steps=50", "--set", "retrain.epochs=1", "--set", "retrain.steps_per_epoch=150",
             "--set", "retrain.checkpoint_every=50", "--set", "retrain.val_batches=2",
             "--random", "12", "--sample-seed", "0", "--searched", *"${SEARCHED[*]}".split(), "--hand", "bn",
             "--testsets", "runs/rank/testsets", "--faces", "runs/rank/test_faces", "--max-images", "100",
             "--storage", "runs", "--name", "rank-cpu", "--max-concurrent", "3", "--wandb-mode", "offline", "--quiet",
             *sys.argv[1:]])
ray.shutdown()
sys.exit(code)
PYEOF
