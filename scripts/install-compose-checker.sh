#!/usr/bin/env bash
# A compose file checker for the tests: `docker compose` (v2) where the plugin is installed, else Debian's
# docker-compose 1.29 (no Docker engine needed to check a file). Needs root to install (or an existing one).
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
  echo "docker compose"
  exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
  command -v docker-compose
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "servelab: no compose checker; install Debian's 'docker-compose' package (as root: apt-get install -y docker-compose)" >&2
  exit 1
fi
echo "servelab: installing Debian's docker-compose to check the generated compose files" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends docker-compose >&2
command -v docker-compose
