#!/usr/bin/env bash
# What `make test` needs beyond .venv: tests/test_browser.py drives Debian's chromium through
# chromium-driver. Installed here when missing and this is root with apt-get; otherwise one line
# says what to install, before anything else runs.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "make test: installing Debian's chromium and chromium-driver (for tests/test_browser.py)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
    exit 0
fi
echo "make test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (as root)" >&2
exit 1
