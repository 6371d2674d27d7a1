#!/usr/bin/env bash
# The GPU check (bench/README.md, "GPU check"): the tests that need CUDA, then SFT, reward and PPO steps
# on SmolLM2-135M in bf16 (and a 2-process FSDP PPO step with 2+ GPUs), within 8 minutes, into one JSON.
#
#   bash bench/gpu_check.sh                        # on a GPU: bench/gpu_check.json
#   bash bench/gpu_check.sh --device cpu out.json  # on the CPU: small sizes, fp32
#
# Then, on a GPU with vLLM installed, bench/rollout_throughput.py into bench/gpu_rollout.json.
# Runs bench/gpu_check.py with the project's Python (.venv/bin/python, else python3; or $PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
"$python" bench/gpu_check.py "$@"
# Rollouts, HF generate against vLLM (bench/rollout_throughput.py), where vLLM is installed in that
# Python (make install-vllm): generation tokens/s on SmolLM2 and PPO episodes/s with both curves.
if [ "${1:-}" != "--device" ] && "$python" -c "import vllm" 2>/dev/null; then
  "$python" bench/rollout_throughput.py --device cuda --models tiny,smollm2 --seeds 1 --prompts 64 \
    --new-tokens 128 --ppo-steps 4 --out bench/gpu_rollout.json
fi
