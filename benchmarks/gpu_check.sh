#!/usr/bin/env bash
# The prepared GPU check, as one command on a lent machine (../shared/GPU_CHECK.md): what the
# device measures (device_check.py: images/s, MFU and peak memory per method, written for
# compute.throughput_file), bitsandbytes' bases quantized on CUDA against the CPU
# (bnb_cuda_check.py), then one short real job per method through Snakemake (gpu_study.py).
#
# That machine has torch but neither bitsandbytes nor snakemake, and no network: their wheels travel
# in .whl/ (carry: [".whl"]), made once here for its Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
#   .venv/bin/pip wheel --no-deps -w .whl connection_pool==0.0.3      # published as an sdist only
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform any --find-links .whl -d .whl snakemake==9.27.1
#   rm .whl/pulp-*.whl   # 16 MB, only for snakemake's MILP scheduler; gpu_study.py uses greedy
# then keep the tree and .whl under the carry limit (du -sh .whl).
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (the device tool's), else /tmp/gpu_check
set -euo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch,timm,peft,bitsandbytes as b,snakemake;print(torch.__version__,timm.__version__,peft.__version__,b.__version__)"
timeout 300 python3 benchmarks/device_check.py --json "$out/rates.json" 2>&1 | tail -40
timeout 120 python3 benchmarks/bnb_cuda_check.py 2>&1 | tail -12
timeout 300 python3 benchmarks/gpu_study.py --workdir /tmp/gpu_study 2>&1 | tail -12
