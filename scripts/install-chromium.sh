#!/usr/bin/env bash
# Debian's headless Chromium, for the browser tests that open report.html. Needs root (or an existing install).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  command -v chromium
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "servelab: Chromium is missing; install Debian's 'chromium' package (as root: apt-get install -y chromium)" >&2
  exit 1
fi
echo "servelab: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >&2
command -v chromium
