#!/bin/sh
# Run a command with a systemd-journald of its own, where none runs (a container):
# a private mount namespace with tmpfs over /run/systemd, /run/log and
# /var/log/journal, so the host's journal and sockets are untouched.  Needs root.
#   dev/private-journald.sh .venv/bin/python -m twisted.trial tests.test_auditsinks tests.test_auditsinks_e2e
set -eu
if [ "${ETPMITM_PRIVATE_JOURNALD:-}" != inside ]; then
    ETPMITM_PRIVATE_JOURNALD=inside exec unshare --mount --propagation private "$0" "$@"
fi
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/log /var/log/journal
mount -t tmpfs tmpfs /run/log
mount -t tmpfs tmpfs /var/log/journal
/lib/systemd/systemd-journald >/dev/null 2>&1 &
journald=$!
trap 'kill "$journald"' EXIT
i=0
while [ ! -S /run/systemd/journal/socket ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then echo "systemd-journald did not start" >&2; exit 1; fi
    sleep 0.1
done
"$@"
