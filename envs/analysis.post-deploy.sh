#!/usr/bin/env bash
# Snakemake runs this once, with the new environment active, from its working directory (the
# checkout): the environment file itself is copied elsewhere, so a relative pip path there breaks.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e .
