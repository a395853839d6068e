#!/usr/bin/env bash
# Create .venv (once) and install MPO Discover with its test, torch and lm (transformers, TRL) extras into it.
# PyTorch is installed first as the CPU build so that no CUDA wheels are pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,torch,lm]"
