"""Split a py-spy collapsed-stack profile of the gateway (``bench.py --profile``) by cost.

    .venv/bin/python dev/profile_split.py bench-profile/keepalive.raw

Each sample goes to the first category whose marker appears in its stack,
walking the categories in order (innermost work first); idle epoll waits are
left out, so the shares are of busy samples.  Figures, not tests.
"""

from __future__ import annotations

import sys
from collections import Counter

CATEGORIES = [
    ("master: worker events (decode, text log, audit line)", ("workerLogged", "_Lines.dataReceived")),
    ("audit: worker event -> the master (encode, pipe write)", ("eventAsJSON", "logToMaster", "FileLogObserver", "ToMaster", "encodeEvent")),
    ("audit: request record (fields, emit)", ("RequestRecord.", "HTTP1Layer._began", "HTTP1Layer._finished")),
    ("HTTP/2 layer (h2, hpack, etpmitm h2 code)", ("h2/", "hpack/", "hyperframe/", "gateway/http2.py", "h2exchange.py", "gateway/_h2.py")),
    ("HTTP/1.1 observer (h11, llhttp path)", ("h11/", "etpmitm/http1.py", "http1fast.py", "http1guard.py", "altsvc.py")),
    ("HTTP/1.1 layer glue", ("gateway/http1.py",)),
    ("TLS (pyOpenSSL)", ("OpenSSL/", "tls.py")),
    ("socket send (writeNow)", ("writeNow",)),
    ("twisted reactor, tcp, other", ("",)),
]


def split(path: str) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    for line in open(path, encoding="utf-8"):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        frames = stack.split(";")
        if frames and frames[-1].startswith("EPollReactor.doPoll"):
            continue  # idle
        for name, markers in CATEGORIES:
            if any(m in stack for m in markers):
                counts[name] += int(n)
                break
    return counts, sum(counts.values())


def main() -> None:
    for path in sys.argv[1:]:
        counts, total = split(path)
        print(f"{path}: {total} busy samples")
        for name, _ in CATEGORIES:
            if counts[name]:
                print(f"  {100 * counts[name] / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
