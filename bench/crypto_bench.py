"""The crypto-only floor of relaying one MB: decrypt it from the origin, re-encrypt it to the device.

Run from the repository root::

    .venv/bin/python bench/crypto_bench.py [--mb 256] [--repeat 5]

In one process, with pyOpenSSL memory BIOs and no sockets: an "origin"
(server) and the gateway's client end, and the gateway's server end and a
"device" (client), each pair handshaken over memory with the gateway's own
hardened contexts (TLS 1.3, so AES-128-GCM as in the lab).  The origin's
records (16 KiB of plaintext each, as nginx sends) are made beforehand; the
clock runs only while the gateway's two ends work: ``bio_write`` the records
in, ``recv`` the plaintext, ``send`` it on, ``bio_read`` the new records out.
That is the cost every relay of these bytes pays whatever it is written in;
CPU per MB through the bench (bench.py, "bulk") is compared with it.

It prints the median of ``--repeat`` runs as CPU ms per MB (MB = 10^6 bytes;
process CPU time, so a busy machine changes it little) and as a JSON line.

``--memory`` also prints the floor of an idle relayed connection's memory:
what glibc's malloc holds (``mallinfo2``) per ``SSL`` object as created, and
per end after a handshake and one 1 KiB exchange each way, with the
gateway's contexts (``SSL_MODE_RELEASE_BUFFERS`` on).  A relayed connection
holds two ends: a server end towards the device, a client end towards the
origin.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from OpenSSL import SSL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etpmitm.tlsconfig import hardened_context  # noqa: E402
from tests.memorytls import move, pair, self_signed_context  # noqa: E402

MB = 1_000_000
RECORD = 16384


def _records(origin: SSL.Connection, megabytes: int) -> list[bytes]:
    """The origin's encrypted stream, in 256 KiB reads (the relay's socket read size)."""
    chunk = b"\0" * RECORD
    stream = bytearray()
    for _ in range(megabytes * MB // RECORD + 1):
        origin.send(chunk)
        stream += origin.bio_read(2**16)
    return [bytes(stream[i : i + 2**18]) for i in range(0, len(stream), 2**18)]


def relay_once(megabytes: int) -> float:
    """CPU seconds per MB the gateway's two ends spend relaying about ``megabytes`` MB."""
    origin, upstream = pair()  # origin = server; upstream = the gateway's client end
    downstream, device = pair()  # downstream = the gateway's server end
    reads = _records(origin, megabytes)
    relayed = 0
    started = time.process_time()
    for read in reads:
        upstream.bio_write(read)
        while True:
            try:
                plain = upstream.recv(RECORD)
            except SSL.WantReadError:
                break
            downstream.send(plain)
            relayed += len(plain)
        while True:
            try:
                downstream.bio_read(2**18)
            except SSL.WantReadError:
                break
    spent = time.process_time() - started
    del device
    return spent / (relayed / MB)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloced() -> int:
    """Bytes in use from glibc's malloc (in the heap and mmapped)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def memory_floor(count: int = 500) -> dict[str, float]:
    """KiB malloc'd per bare SSL object, and per handshaken server and client end."""
    server_context = self_signed_context()
    client_context = hardened_context()
    figures: dict[str, float] = {}
    gc.collect()
    before = _malloced()
    bare = [SSL.Connection(server_context, None) for _ in range(count)]
    figures["bare_ssl_kib"] = (_malloced() - before) / count / 1024
    del bare
    for side in ("server", "client"):
        kept: list[SSL.Connection] = []
        gc.collect()
        before = _malloced()
        for _ in range(count):
            server, client = pair(server_context, client_context)
            for a, b in ((client, server), (server, client)):
                a.send(b"x" * 1024)
                move(a, b)
                b.recv(RECORD)
            kept.append(server if side == "server" else client)
            del server, client
        gc.collect()
        figures[f"{side}_end_kib"] = (_malloced() - before) / count / 1024
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=256, help="MB relayed per run (default 256)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the median is reported (default 5)")
    parser.add_argument("--memory", action="store_true", help="also the memory floor of OpenSSL's per-connection state")
    args = parser.parse_args(argv)
    runs = [relay_once(args.mb) * 1000 for _ in range(args.repeat)]
    median = statistics.median(runs)
    print(f"crypto only, decrypt + re-encrypt: {median:.3f} ms CPU per MB "
          f"(median of {args.repeat} x {args.mb} MB; runs {', '.join(f'{r:.3f}' for r in runs)})")
    result: dict[str, object] = {"crypto_ms_per_MB": median, "runs_ms_per_MB": runs, "megabytes": args.mb}
    if args.memory:
        floor = memory_floor()
        print(f"malloc'd per SSL object: {floor['bare_ssl_kib']:.1f} KiB as created; after a handshake and 1 KiB "
              f"each way: {floor['server_end_kib']:.1f} KiB server end, {floor['client_end_kib']:.1f} KiB client end "
              f"(a relayed connection holds one of each: {floor['server_end_kib'] + floor['client_end_kib']:.1f} KiB)")
        result["memory_floor"] = floor
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
