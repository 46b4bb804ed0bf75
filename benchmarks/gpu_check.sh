#!/usr/bin/env bash
# The GPU checks, as one prepared run for a machine with a CUDA device (no GPU on the development
# machines): the gpu-marked tests, then the GPU sections of the speed benchmarks. Figures land in
# benchmarks/results/ (or under $OUT when set, for a lent device machine).
# extract_throughput --only gpu: resnet50+alexnet at 224² in bf16 (GPU_IMAGES images), JPEG 2000
# decoding CPU vs nvImageCodec, and each backbone family (resnet50, alexnet, timm convnext_tiny and
# efficientnet_b2, Mammo-CLIP B2/B5 from random-tensor checkpoints) at 224² and 1024x512: raw bf16
# forward and warm-cache extract (min(GPU_IMAGES, 1024) images; FAMILIES picks some, comma-separated).
#   bash benchmarks/gpu_check.sh            # after: python -m pip install -e ".[test,gpu]"
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 2
status=0
python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" || status=1
families=("--families" "${FAMILIES:-resnet50,alexnet,timm convnext_tiny,timm efficientnet_b2,mammoclip B2,mammoclip B5}")
PYTHONUNBUFFERED=1 python benchmarks/extract_throughput.py --only gpu --gpu-images "${GPU_IMAGES:-8192}" \
    "${families[@]}" --out "$out" 2>&1 | tee "$out/gpu_extract.log" || status=1
PYTHONUNBUFFERED=1 python benchmarks/read_decode.py 2>&1 | tee "$out/gpu_read_decode.log" || status=1
exit $status
