#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian/Ubuntu machine:
# system tools for the namespace lab (as root), then a virtualenv in .venv
# with etpmitm and its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # A group per line; the lab's real components (c-icap and clamd for ICAP,
    # rsyslog for the syslog sink, chromium for the browser test, ...).
    packages=(
        iproute2 iptables nftables procps psmisc
        openssl curl ca-certificates wrk nghttp2-client sslscan shellcheck
        chromium libnss3-tools
        c-icap libc-icap-mod-virus-scan clamav-daemon clamav
        rsyslog
        prometheus haproxy
    )
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q '.[test]'
