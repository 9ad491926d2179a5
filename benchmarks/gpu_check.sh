#!/usr/bin/env bash
# The prepared GPU check, as one command on a lent machine (../shared/GPU_CHECK.md): what the
# device measures (device_check.py: images/s, MFU and peak memory per method, written for
# compute.throughput_file, then three methods in fp16), the quantized bases (bitsandbytes' and QA-LoRA's) built on CUDA
# against the CPU (bnb_cuda_check.py), then one short real job per method through Snakemake
# (gpu_study.py).
#
# That machine has torch (2.11) but neither bitsandbytes nor snakemake, and no network: their wheels
# travel in .whl/ (carry: [".whl"]), with timm's and peft's at our pins, made once here:
#   p="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
#      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
#      --platform any"
#   python3 -m pip download --no-deps $p -d .whl bitsandbytes==0.50.2 timm==1.0.31 peft==0.21.2
#   .venv/bin/pip wheel --no-deps -w .whl connection_pool==0.0.3      # published as an sdist only
#   python3 -m pip download $p --find-links .whl -d .whl snakemake==9.27.1
#   rm .whl/pulp-*.whl   # 16 MB, only for snakemake's MILP scheduler; gpu_study.py uses greedy
# and drop the wheels of what the machine has (.library/device/KINDS.md), so that the tree and
# .whl stay under the 64 MiB carry limit (du -sh .whl: 55 MB).
#
# Each step has its own time limit (520 s in all, the set-up at most 50 s more: call the device tool
# with timeout_s=580, of its 600), writes its whole output to $OUT, and a failed step does not stop
# the next: one call measures all it can.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (the device tool's), else /tmp/gpu_check
#   bash benchmarks/gpu_check.sh --smoke    # the same steps at a tiny size: a CPU rehearsal
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
failed=()
if [ "${1:-}" = --smoke ]; then  # in this environment, as it is
    tiny=(--model deit_tiny --img-size 16)
    checks=("${tiny[@]}" --patch-size 4 --batch-size 4 --steps 2)
    bases=("${tiny[@]}" --device cpu)  # the CPU against itself
    study=("${tiny[@]}" --patch-size 4 --depth 2 --images 320 --cores 2 --threads 1)
else
    checks=()
    bases=()
    study=(--cores 16 --threads 4)  # 4 jobs side by side on the GPU; ONNX export and checks on 4 cores each
    timeout 30 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi

step() {  # step NAME SECONDS COMMAND...: run it, keep its log in $OUT, print the end of the log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s)"
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -v -e 'it/s\]' -e 'kernels-community' "$out/$name.log" | tail -n 30
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 15 python3 -c "import torch,timm,peft,transformers,bitsandbytes as b,snakemake as s;print('torch',torch.__version__,
'timm',timm.__version__,'peft',peft.__version__,'transformers',transformers.__version__,'bnb',b.__version__,
'snakemake',s.__version__)"
step device_check 130 python3 benchmarks/device_check.py "${checks[@]}" --json "$out/rates.json"
# fp16 with the loss scaler (a T4's or V100's auto) through fused AdamW, peft's, bitsandbytes' and our layers
step fp16_check 60 python3 benchmarks/device_check.py "${checks[@]}" --precision fp16 \
    --methods lora_r8,qlora4_r8,qalora4_r8 --json "$out/rates.json"  # added beside the auto rates
step bnb_cuda_check 100 python3 benchmarks/bnb_cuda_check.py "${bases[@]}"
step gpu_study 230 python3 benchmarks/gpu_study.py "${study[@]}" --workdir "$(mktemp -d)"
echo "gpu_check: ${#failed[@]} of 4 steps failed${failed[*]:+: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
