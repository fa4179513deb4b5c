#!/usr/bin/env bash
# Run by `snakemake --use-conda` once, right after it creates the env of
# workflow/envs/pneumocxr.yaml, inside that env: the pins come from the yaml, the project
# itself from the repository (the rule scripts import pneumocxr). Snakemake runs it from the
# workflow's working directory, the repository root.
set -euo pipefail
python -m pip install --no-deps -e .
