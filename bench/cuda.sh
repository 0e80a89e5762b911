#!/bin/bash
# CUDA correctness and speed in one go, for a lease on a GPU machine (bench/README.md, the H200
# rows): the fast path's loss against the reference's and both rates, for the cpu and lab presets;
# Predict's latency and where it goes; DDP over NCCL through train_cli.py; lab's memory per sequence.
# Each script appends its line to bench/results.jsonl. Needs data/sim (python -m cvae.data generate).
set -u
PY=${PY:-python}
cd "$(dirname "$0")/.."
$PY bench/train_step.py --preset cpu --rounds 5
$PY bench/train_step.py --preset lab --rounds 3
$PY bench/predict.py --repeats 10
$PY bench/predict_profile.py
$PY -m torch.distributed.run --standalone --nproc_per_node=1 train_cli.py --preset lab --data data/sim --epochs 1 \
    --iters-per-epoch 30 --val-seqs 32 --out /tmp/cuda-ddp 2>&1 | tr '\r' '\n' | grep -v '^training' | tail -5
$PY bench/memory.py --preset lab --batches 4 12
