#!/usr/bin/env bash
# The GPU checks in one command, for a machine with a CUDA device (run from the repository root,
# with difftre_torch's dependencies importable):
#   1. tests/test_cuda.py: CUDA against CPU (observables, gradient, NequIP + correction), the
#      batched sampler's ensemble (eager and compiled step) and exact restore on the GPU, the
#      compiled step against the eager one, a trainer run there;
#   2. python -m benchmarks.update (N = 100, 1000: with N = 10000 as well it outlasts the stage,
#      measured on an H100) / benchmarks.sampling --device cuda, into a copy of
#      benchmarks/RESULTS.md (sampling with the compiled step as well; sections "## update on CUDA", "## sampling on CUDA", and
#      "## sampling, DeePMD-kit on CUDA" where DeePMD-kit is installed);
#   3. `difftre export lammps --compile-device cuda` of the NequIP base: nequip-compile for
#      pair_nequip on the GPU (the file LAMMPS there would load);
#   4. python -m benchmarks.distributed on the GPU(s): 1 process against 2 ranks (NCCL with a
#      GPU per rank, gloo when the two share one GPU), into "## distributed on CUDA";
#   5. the g-C3N4 recipe in quick mode on the GPU with the time that is left (its log says how
#      far it got and how long each step took).
# Usage: bash benchmarks/cuda_checks.sh OUT_DIR [BUDGET_S]   (default outputs/cuda_checks, 540 s)
set -u
out=${1:-outputs/cuda_checks}
budget=${2:-540}
mkdir -p "$out"
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ "$limit" -le 10 ]; then
        echo "$name: skipped, no time left" | tee -a "$out/summary.txt"
        return
    fi
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/summary.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, nequip, ase, vesin.torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('nequip', nequip.__version__, 'ase', ase.__version__)"
} >"$out/summary.txt" 2>&1

stage test_cuda 240 python3 -m pytest -q -rs tests/test_cuda.py
cp benchmarks/RESULTS.md "$out/RESULTS.md"
stage bench_update 130 python3 -m benchmarks.update --device cuda --model nequip --sizes 100 1000 --out "$out/RESULTS.md"
stage bench_sampling 150 python3 -m benchmarks.sampling --device cuda --model nequip lj --seconds 2 --compile-step --out "$out/RESULTS.md"
if python3 -c "import deepmd.pt" 2>/dev/null; then  # the deepmd extra: batched DeePMD frames on the GPU
    stage bench_sampling_deepmd 60 python3 -m benchmarks.sampling --device cuda --model deepmd --seconds 2 --out "$out/RESULTS.md"
fi
stage export_lammps_cuda 150 python3 -m difftre_torch export lammps "$out/lammps_cuda" recipes/gc3n4/quick.yaml \
    --model data/world/base_model/base.ckpt --compile-device cuda
stage bench_distributed 150 python3 -m benchmarks.distributed --updates 3 --out "$out/RESULTS.md"
stage gc3n4_quick $(($(left) - 10)) python3 -m difftre_torch refine recipes/gc3n4/quick.yaml --out "${TMPDIR:-/tmp}/gc3n4_cuda"
echo "total $((SECONDS - start)) s" >>"$out/summary.txt"
