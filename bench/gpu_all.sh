#!/usr/bin/env bash
# Every GPU check and figure lens owes, in one command, for a GPU machine lent for minutes:
# the GPU tests, then bench/gpu.py (serving targets), bench/decode.py (nvJPEG against Pillow),
# bench/index.py --device cuda (exact search), bench/train_speed.py (training targets).
#
#   bash bench/gpu_all.sh OUT_DIR           # results and logs land in OUT_DIR
#   SMALL=1 bash bench/gpu_all.sh OUT_DIR   # tiny sizes: checks the script on any machine
#   ONLY="gpu index" bash bench/gpu_all.sh OUT_DIR   # those steps alone (versions always runs)
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
    --iterations 2 --seconds 0 --rounds 1 --n 5000 --queries 1024)
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
step() {  # step NAME SECONDS COMMAND...: runs it for at most SECONDS, logs to OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  case " ${ONLY:-$name} versions " in *" $name "*) ;; *) return 0 ;; esac  # ONLY="gpu index": those
  echo "== $name: $*"
  local start=$SECONDS
  if ! timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.log"; then
    echo "== $name FAILED"; status=1
  fi
  echo "== $name took $((SECONDS - start)) s"
}
# The steps in the order of what matters most, each bounded, so that a lease cut short still
# brings back the serving figures.
step versions 60 "$python" -c "import torch, onnxruntime as ort; print(torch.__version__, \
torch.cuda.is_available(), ort.__version__, ort.get_available_providers())"
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -s um -o T >"$out/dmon.log" 2>&1 &  # GPU utilisation through the run
  dmon=$!
fi
step gpu 300 "$python" bench/gpu.py "${gpu[@]}" --out "$out/gpu.json" --profile "$out/e2e.stacks"
[ -n "${dmon:-}" ] && kill "$dmon"
step gpu-tests 150 "$python" -m pytest -q -m gpu -p no:cacheprovider tests/server
step decode 60 "$python" bench/decode.py "${decode[@]}" --out "$out/decode.json"
step train-speed 150 "$python" bench/train_speed.py "${train[@]}" --out "$out/train_speed.json"
step index 120 "$python" bench/index.py "${index[@]}" --out "$out/index.json"
echo "device: $device; results in $out"
exit $status
