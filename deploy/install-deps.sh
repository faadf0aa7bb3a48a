#!/usr/bin/env bash
# Installs every Debian package Meridian needs to build, test and run (this issue and the ones
# after it). Idempotent: packages already present are left alone, and apt-get update runs only
# when something is missing. Needs root (or sudo) and Debian 12.
#   deploy/install-deps.sh           install what is missing
#   deploy/install-deps.sh --help    this text; any other argument exits 2, installing nothing
set -euo pipefail

case "$#:${1:-}" in
  0:) ;;
  1:-h | 1:--help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d'; exit 0 ;;
  *) echo "install-deps: unknown argument(s): $* (it takes none; see --help); nothing was installed" >&2; exit 2 ;;
esac

PACKAGES=(
  build-essential g++ clang curl libclang-rt-14-dev cmake ninja-build ccache pkg-config clang-format
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libpqxx-dev libasio-dev libhiredis-dev libhttp-parser-dev libabsl-dev libspdlog-dev
  libyaml-cpp-dev prometheus-cpp-dev libcli11-dev librapidcheck-dev libgtest-dev libgmock-dev
  libbenchmark-dev libssl-dev nlohmann-json3-dev
  postgresql postgresql-contrib postgresql-15-pglogical pgbouncer redis-server pdns-server
  pdns-backend-remote
  dnsutils iproute2 iptables iputils-ping libnetfilter-queue-dev util-linux procps
  libmaxminddb-dev libcurl4-openssl-dev libmaxmind-db-writer-perl libc-ares-dev jq
)
# nodejs and npm: a machine may already carry a newer Node.js (for example NodeSource's, which
# bundles npm and conflicts with Debian's npm package); only install Debian's when absent.
if ! command -v node >/dev/null 2>&1; then PACKAGES+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then PACKAGES+=(npm); fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} missing packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
