#!/usr/bin/env bash
# Sets up a fresh machine for cnnzoo: a virtual environment in .venv with every pinned dependency.
#   bash scripts/setup.sh          # the library, the command line and the pretrained-weights extra
#   bash scripts/setup.sh --dev    # plus the test tools and the reference implementations the tests use
# Every install goes through constraints.txt: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

# Fashion-MNIST ships as a Debian package; cnnzoo reads it offline from /usr/share/datasets.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install Debian's dataset-fashion-mnist; the Fashion-MNIST features will ask for the files" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# torch must be a CPU build: PyPI's Linux torch 2.13.0 is the CUDA one, which pulls about 20
# nvidia-* and cuda-* packages (gigabytes) that a CPU never uses. pip is asked first what its own
# sources (PyPI, a wheel folder in pip's configuration) would install; only when that is not a
# +cpu build does PyTorch's CPU index join in (the pin torch==2.13.0 matches its 2.13.0+cpu, as
# PEP 440 ignores a local label, and pip prefers it). Not always: where that index cannot be
# reached, each package pip looks up there costs about 9 s of retries and a warning.
# CNNZOO_TORCH_INDEX=URL names another index (a mirror of it); empty, pip's own sources alone.
torch_index=${CNNZOO_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
extra=()
if [ -n "$torch_index" ] && ! $py -m pip install -q --dry-run --ignore-installed --report - \
    -c constraints.txt torch 2>/dev/null | grep -q '"version": "[^"]*+cpu"'; then
  extra=(--extra-index-url "$torch_index")
fi
$py -m pip install -q -c constraints.txt ${extra[@]+"${extra[@]}"} torch
if [ $dev = 1 ]; then
  $py -m pip install -q -c constraints.txt -e ".[all,test]"
  # torchvision's model code is a test oracle only: its compiled ops do not load against the CPU
  # torch, so the tests import its pure-Python model definitions (tests/conftest.py says how).
  $py -m pip install -q -c constraints.txt --no-deps torchvision
else
  $py -m pip install -q -c constraints.txt -e ".[all]"
fi
echo "cnnzoo is set up in .venv ($($py -c 'import torch; print("torch", torch.__version__)'))"
