#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian packages) for the dashboard's browser tests.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
echo "chromium $(chromium --version 2>/dev/null | awk '{print $2}') and chromedriver installed"
