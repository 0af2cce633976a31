#!/usr/bin/env bash
# Installs the Debian packages the tests need, if they are missing. Fails loudly.
set -euo pipefail
need=()
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing ${need[*]} (Debian packages)"
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "system-deps: FAILED: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
  fi
else SUDO=""; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || { echo "system-deps: FAILED: apt-get update" >&2; exit 1; }
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || { echo "system-deps: FAILED: apt-get install ${need[*]}" >&2; exit 1; }
[ -x /usr/lib/chromium/chromium ] || { echo "system-deps: FAILED: /usr/lib/chromium/chromium missing after install" >&2; exit 1; }
