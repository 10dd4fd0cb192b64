#!/usr/bin/env bash
# Install the project (torch first, see scripts/install.sh), then run `sdft up --demo`: start
# PostgreSQL, Redis and S3 embedded under .sdft/, the API and a worker, and fine-tune
# SmolLM2-135M-Instruct on the example drone traces. Extra arguments go to `sdft up`.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/install.sh
exec "${SDFT_VENV:-.venv}/bin/sdft" up --demo "$@"
