#!/usr/bin/env bash
# Install Debian's Slurm and munge for the launch-script tests (root with apt-get only).
# Skipped with a note elsewhere: those tests then skip, naming what is missing.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v munged >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "[env] slurm-wlm/munge not installed and not root with apt-get: slurm tests will skip"
    exit 0
fi
echo "[env] installing slurm-wlm and munge (Debian) for the launch-script tests"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q slurm-wlm munge >/dev/null
