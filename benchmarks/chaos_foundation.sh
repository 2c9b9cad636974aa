#!/bin/bash
# issue 2 done-means: ChaosT2, 4 labelled, 6 test
set -e
cd "$(dirname "$0")/.."
mkdir -p runs/chaos_foundation
S=.venv/bin/semiseg
D=../shared/data/ChaosT2
R=runs/chaos_foundation/run
t() { local s=$(date +%s.%N); "$@"; echo "TIME $(echo "$(date +%s.%N) - $s" | bc) s: $*" >> runs/chaos_foundation/times.txt; }
rm -f runs/chaos_foundation/times.txt
t $S --quiet validate $D
t $S --quiet plan $D --out $R --spacing 7.7 2.5 2.5 --max-patch-voxels 98304 --base-features 16 --max-features 128
t $S --quiet train $R --fold all --iterations 800
mkdir -p runs/chaos_foundation/test_images runs/chaos_foundation/test_labels
for c in chaos_014 chaos_015 chaos_016 chaos_017 chaos_018 chaos_019; do ln -sf "$(realpath $D)/imagesTr/${c}_0000.nii.gz" runs/chaos_foundation/test_images/; ln -sf $(realpath $D)/labelsTr/$c.nii.gz runs/chaos_foundation/test_labels/; done
t $S --quiet predict --model $R/supervised/fold_all --input runs/chaos_foundation/test_images --output runs/chaos_foundation/pred
t $S --quiet evaluate --pred runs/chaos_foundation/pred --ref runs/chaos_foundation/test_labels --dataset $D --out runs/chaos_foundation/metrics.json
# the committed copy names no directory of this machine (semiseg.benchmark.results.portable_paths)
.venv/bin/python -c "import json,sys; from semiseg.benchmark.results import portable_paths; d=json.load(open('runs/chaos_foundation/metrics.json')); open('benchmarks/results/chaos_foundation_metrics.json','w').write(json.dumps(portable_paths(d), indent=2) + '\n')"
