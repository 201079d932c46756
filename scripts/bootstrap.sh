#!/usr/bin/env bash
# Create .venv at the repository root and install the pinned stack into it.
# torch goes first and exactly 2.13.0: that is the local CPU build; any looser pin would pull a
# multi-GB CUDA build. Everything else is pinned in requirements.lock. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
