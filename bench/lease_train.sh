#!/bin/bash
# Training at scale inside one GPU lease (15 minutes of device time, at most 10 a command): three
# runs of the bundle's recipe with stop 59's carry, from the bundle, at once and stopped by a
# deadline (SIGTERM saves last/); a watcher copies each run's weights whenever its step changes,
# and the copies at the largest step all three reached (and half of it) come back as tars in OUT.
#   ctl:   the recipe at batch B
#   sall:  the same, the energy score's true futures re-simulated for every training scene, not 256
#   sall8: the same with 8 true futures a scene, not 4
# The question (README, stop 61): does the energy score's thin signal (4 scenes a step on the CPU)
# keep the model's spread off the world's own? Needs data/sim (python -m cvae.data generate).
# usage: bash bench/lease_train.sh PYTHON SECONDS BATCH OUT     e.g. python3 400 256 $OUT
set -u
PY=$1; SECS=$2; B=$3; OUT=$4
IT=${IT:-50}  # steps an epoch: how often last/ is saved
SCENES=${SCENES:-2048}  # training scenes re-simulated for sall and sall8 (all of the default data set)
R="--preset cpu --init assets/model --flow-deadzone 0 --z-scale 1 --tfr 0.3 --energy-truths 4 --energy-patch 2
   --energy-weight 2 --z-hold true --motion-weight 3 --arm-copy true --z-map 4 --map-noise-only true
   --energy-branch-weight 10 --map-prior true --data data/sim --flow-carry true --carry-noise 2 --carry-shown true
   --batch-size $B --epochs 100 --iters-per-epoch $IT --num-workers 3"
RUNS="ctl sall sall8"
cd "$(dirname "$0")/.."
mkdir -p runs/lease
export OMP_NUM_THREADS=2
timeout -s TERM "$SECS" $PY train_cli.py $R --out runs/lease/ctl > runs/lease/ctl.log 2>&1 &
timeout -s TERM "$SECS" $PY train_cli.py $R --energy-scenes $SCENES --out runs/lease/sall > runs/lease/sall.log 2>&1 &
timeout -s TERM "$SECS" $PY train_cli.py $R --energy-scenes $SCENES --energy-truths 8 --out runs/lease/sall8 \
    > runs/lease/sall8.log 2>&1 &
copies() {
  while true; do
    for n in $RUNS; do
      m=runs/lease/$n/last/meta.json
      [ -f "$m" ] || continue
      s=$($PY -c "import json; print(json.load(open('$m'))['step'])" 2>/dev/null) || continue
      d=runs/lease/$n/s$s
      [ -d "$d" ] && continue
      mkdir -p "$d.tmp" && cp runs/lease/$n/last/meta.json runs/lease/$n/last/model.safetensors runs/lease/$n/log.jsonl \
        "$d.tmp/" 2>/dev/null && mv "$d.tmp" "$d"  # a copy that failed is tried again on the next pass
    done
    sleep 2
  done
}
copies & watcher=$!
wait %1 %2 %3
sleep 3; kill $watcher
common=$(for n in $RUNS; do ls runs/lease/$n | grep '^s[0-9]*$' | sed 's/s//' | sort -n | tail -1; done | sort -n | head -1)
half=$(( common / 2 / IT * IT ))
echo "steps all three reached: $common (and $half)"
for n in $RUNS; do
  echo "== $n"; tr '\r' '\n' < runs/lease/$n.log | grep -v '^training' | tail -4
  d=""; for s in $common $half; do [ -d runs/lease/$n/s$s ] && d="$d $n/s$s"; done
  tar -C runs/lease -cf "$OUT/$n.tar" $d $n.log
done
