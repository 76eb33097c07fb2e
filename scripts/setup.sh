#!/usr/bin/env bash
# Sets up a fresh machine for cnnzoo: a virtual environment in .venv with every pinned dependency.
#   bash scripts/setup.sh          # the library, the command line and every extra (cnnzoo[all]:
#                                  # the pretrained weights, scikit-image/-learn, h5py, tensorboard)
#   bash scripts/setup.sh --dev    # plus the test tools and the reference implementations the tests use
# Environment:
#   PYTHON=python3.12              # the interpreter .venv is made with (default python3; >= 3.11)
#   TORCH_INDEX_URL=URL            # where the CPU build of torch comes from when PyPI's is the CUDA
#                                  # build (default PyTorch's CPU index); TORCH_INDEX_URL=pypi takes PyPI's
# Every install goes through constraints.txt: an unpinned torch would pull a newer release.
# On Debian or Ubuntu it also installs the package dataset-fashion-mnist, as root or with a sudo
# that asks no password (otherwise it says what to run).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
fail() { echo "setup.sh: error: $*" >&2; exit 2; }

dev=0
for arg in "$@"; do
  case $arg in
    --dev) dev=1 ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option $arg: the only option is --dev (bash scripts/setup.sh --help)" ;;
  esac
done

# Before anything is installed: a venv of an older Python failed only at cnnzoo's own install,
# after torch, with pip's 'requires a different Python'.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  command -v "$python" >/dev/null 2>&1 || fail "no $python on this machine: install Python >= 3.11, or name it with PYTHON=..."
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "cnnzoo needs Python >= 3.11 and $python is $("$python" -c 'import sys; print(sys.version.split()[0])'): run PYTHON=python3.11 bash scripts/setup.sh"
else
  .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "cnnzoo needs Python >= 3.11 and .venv holds $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'): remove .venv and run this again"
fi

# Fashion-MNIST ships as a Debian package; cnnzoo reads it offline from /usr/share/datasets (the
# demo and the tests use it). Not root, it takes sudo where that asks no password (a CI runner's),
# else it says what to run: it used to skip the install without a word.
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -d $fmnist ] && command -v apt-get >/dev/null 2>&1; then
  as_root=
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root="sudo -n"
      echo "setup.sh: installing Debian's dataset-fashion-mnist with sudo" >&2
    else
      as_root=none
      echo "note: Fashion-MNIST is not in $fmnist and installing it needs root: sudo apt-get install dataset-fashion-mnist (the demo and the tests read it; else cnnzoo downloads it on first use)" >&2
    fi
  fi
  if [ "$as_root" != none ]; then
    ($as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "note: could not install Debian's dataset-fashion-mnist; the Fashion-MNIST features will ask for the files" >&2
  fi
fi

# Debian and Ubuntu ship venv without ensurepip until python3-venv is installed: venv then left a
# .venv without pip, which the next run took as made and failed in with 'No module named pip'.
if [ ! -x .venv/bin/python ]; then
  made=0; [ -e .venv ] || made=1
  "$python" -m venv .venv || {
    [ $made = 1 ] && rm -rf .venv
    fail "could not make .venv with $python (why: above; on Debian or Ubuntu: apt install python3-venv)"
  }
fi
py=.venv/bin/python
$py -m pip --version >/dev/null 2>&1 || fail ".venv has no pip (made without ensurepip): remove .venv and run this again"
$py -m pip install -q --upgrade pip

# On Linux x86_64 (and for a Python without a CPU wheel at hand) PyPI's torch is the CUDA build:
# about 3 GB of nvidia-* packages that cnnzoo, which runs on the CPU, never loads. pip says
# what it would install before it downloads anything.
cuda=$($py -m pip install -q --dry-run --report - -c constraints.txt torch 2>/dev/null | $py -c '
import json, sys
try:
    plan = json.load(sys.stdin)["install"]
except ValueError:  # pip could not resolve: the install below says why
    plan = []
print(sum(p["metadata"]["name"].lower().startswith("nvidia-") for p in plan))') || cuda=0
index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if [ "$cuda" != 0 ] && [ "$index" != pypi ]; then
  echo "setup.sh: PyPI's torch here is the CUDA build ($cuda nvidia packages, about 3 GB): installing the CPU build from $index" >&2
  $py -m pip install -q -c constraints.txt --index-url "$index" torch \
    || fail "could not install torch's CPU build from $index: set TORCH_INDEX_URL to an index that has it, or TORCH_INDEX_URL=pypi to take PyPI's CUDA build"
else
  $py -m pip install -q -c constraints.txt torch
fi
if [ $dev = 1 ]; then
  $py -m pip install -q -c constraints.txt -e ".[all,test]"
  # torchvision's model code is a test oracle only: its compiled ops do not load against the CPU
  # torch, so the tests import its pure-Python model definitions (tests/conftest.py says how).
  $py -m pip install -q -c constraints.txt --no-deps torchvision
else
  $py -m pip install -q -c constraints.txt -e ".[all]"
fi
echo "cnnzoo is set up in .venv ($($py -c 'import torch; print("torch", torch.__version__)'))"
