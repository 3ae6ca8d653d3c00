#!/usr/bin/env bash
# `make lab`: JupyterLab on notebooks/, listening on loopback only and guarded by its token, whose URL it prints.
# As root too, which is how containers and this project's machines run: Jupyter refuses root without --allow-root.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
as_root=()
if [ "$(id -u)" = 0 ]; then
    as_root=(--allow-root)
fi
exec "$VENV/bin/jupyter" lab --ServerApp.root_dir=notebooks --ServerApp.ip=127.0.0.1 --no-browser "${as_root[@]}" "$@"
