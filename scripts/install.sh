#!/usr/bin/env bash
# Set up fasttorrent on a fresh Debian machine with Python 3.11+ and gcc:
# the Debian packages the interop tests use, then the package itself (editable,
# so the compiled core lands next to its sources) with its test and bench extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

deb_pkgs=(opentracker aria2 transmission-cli nginx)
missing=()
for p in "${deb_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "install.sh: not root or no apt-get; the interop tests need: ${missing[*]}" >&2
    fi
fi
# A stale in-place build of the core (either module) would shadow a fresh one.
rm -f torrent/_fast*.so torrent/_fast.c torrent/_io*.so torrent/_io.c
"$PY" -m pip install -q --disable-pip-version-check -e '.[test,bench]'
# pyenv puts new console scripts (fasttorrent) on PATH only after a rehash
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
# Byte-compile the package now (as a wheel install does): every worker process
# imports it, and with PYTHONDONTWRITEBYTECODE set nothing would ever be cached.
"$PY" -m compileall -q torrent >/dev/null
