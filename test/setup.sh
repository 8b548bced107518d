#!/usr/bin/env bash
# Installs what runguard's tests and demo need on a fresh Debian 12 machine (as root), then the npm
# packages and the build. Idempotent: only what is missing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# libbpf1: the loader. clang, llvm, libbpf-dev, bpftool: rebuild and check the committed BPF objects.
# postgresql: real servers and clients for the tests. iptables: the reference path in bench/.
# sudo, systemd: the packaging checks (visudo, systemd-analyze verify). pgbouncer: the reference in bench/;
# linux-perf: bench/pgbench.ts counts the agent's fdatasyncs with it.
# chromium + fonts: the dashboard's browser tests (driven by playwright-core; no browser download).
# g++, make: the native data path addon (agent/native), built against nodejs's own headers.
PACKAGES=(libbpf1 clang llvm g++ make libbpf-dev bpftool linux-libc-dev postgresql postgresql-client iptables python3 procps iproute2 openssl sudo systemd pgbouncer linux-perf
  chromium fonts-dejavu-core fonts-liberation)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
