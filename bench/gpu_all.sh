#!/usr/bin/env bash
# Every GPU check and figure lens owes, in one command, for a GPU machine lent for minutes:
# the GPU tests, then bench/gpu.py (serving targets), bench/decode.py (nvJPEG against Pillow),
# bench/index.py --device cuda (exact search), bench/train_speed.py (training targets).
#
#   bash bench/gpu_all.sh OUT_DIR           # results and logs land in OUT_DIR
#   SMALL=1 bash bench/gpu_all.sh OUT_DIR   # tiny sizes: checks the script on any machine
#
# It needs the project importable by `python3` (an installed .venv, or wheels unpacked into
# PYTHONPATH on a machine without a registry) and generated protocol code in gen/.
set -uo pipefail
out=${1:?usage: bench/gpu_all.sh OUT_DIR}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root:$root/clients:$root/gen${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
# The benchmarks start `lens serve` beside the interpreter: give it one if it is not installed.
lens="$(dirname "$(command -v "$python")")/lens"
if [ ! -x "$lens" ]; then
  printf '#!/bin/sh\nexec %s -m lens_client.cli "$@"\n' "$(command -v "$python")" >"$lens"
  chmod +x "$lens"
fi
if [ -n "${SMALL:-}" ]; then
  device=cpu
  gpu=(--tiny --device cpu --images 64 --texts 128 --clients 2 --single 10 --batch 16
    --iterations 2 --n 5000 --queries 1024)
  decode=(--images 32 --batch 16 --device cpu)
  index=(--n 20000 --types flat --durable 0 --device cpu)
  train=(--tiny --steps 1 --warmup 0)
else
  device=cuda
  gpu=()
  decode=(--images 1024 --batch 256 --device cuda)
  index=(--types flat --durable 0 --device cuda)
  train=()
fi

status=0
step() {  # step NAME COMMAND...: runs it, logs to OUT_DIR/NAME.log, remembers a failure
  local name=$1; shift
  echo "== $name: $*"
  if ! "$@" 2>&1 | tee "$out/$name.log"; then
    echo "== $name FAILED"; status=1
  fi
}
step versions "$python" -c "import torch, onnxruntime as ort; print(torch.__version__, \
torch.cuda.is_available(), ort.__version__, ort.get_available_providers())"
step gpu-tests "$python" -m pytest -q -m gpu -p no:cacheprovider tests/server
step gpu "$python" bench/gpu.py "${gpu[@]}" --out "$out/gpu.json"
step decode "$python" bench/decode.py "${decode[@]}" --out "$out/decode.json"
step index "$python" bench/index.py "${index[@]}" --out "$out/index.json"
step train-speed "$python" bench/train_speed.py "${train[@]}" --out "$out/train_speed.json"
echo "device: $device; results in $out"
exit $status
