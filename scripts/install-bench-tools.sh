#!/usr/bin/env bash
# Installs the load generator the serving benchmark uses (bench/serving_bench.py): wrk, from Debian.
# wrk is C and takes far less of a small machine's cores than a Python load client.
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
($SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk) >/dev/null
wrk --version 2>&1 | head -1 || true
