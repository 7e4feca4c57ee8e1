#!/usr/bin/env bash
# Make sure a Chromium for the browser tests exists. Playwright drives it; we never let
# Playwright download its own browser (no downloads outside package registries).
# TTM_CHROMIUM=/path/to/chromium uses another build.
set -euo pipefail
chromium="${TTM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
if [ -n "${TTM_CHROMIUM:-}" ]; then
  echo "TTM_CHROMIUM=$TTM_CHROMIUM is not an executable" >&2
  exit 1
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian's chromium for the browser tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
else
  echo "No Chromium at $chromium. Install your distribution's chromium package, or set" \
       "TTM_CHROMIUM to a Chromium/Chrome executable." >&2
  exit 1
fi
