# trial's assertion methods carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""A real browser through the gateway: headless Chromium in the lab's client namespace.

Chromium trusts the gateway's root through an NSS database (``certutil``, from
libnss3-tools) in a per-test ``$HOME``, reaches ``origin.test`` only at the lab
origin's address (``--host-resolver-rules``: no DNS, nothing outside the lab),
and loads a page with a stylesheet, a script, an image and two fetches over h2,
one of them to a URL that a request rule blocks. The DOM the page's script
wrote is checked with ``--dump-dom``, and each load leaves a screenshot in the
test's temporary directory whose pixels are checked too.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from etpmitm.blockpage import TITLE
from tests.gatewaylab import GatewayLab, inspecting_lab, shared_lab
from tests.lab import Lab, lab_unavailable
from tests.origin_server import PICTURE_SIZE

ORIGIN = Lab.origin_ip
WINDOW = (1024, 768)
RULE = "lab blocked paths"
POLICY = f"""\
[[rule]]
name = "{RULE}"
urls = ["origin.test/blocked/*"]
action = "block"
"""

# Colours the screenshots must show: the page's picture (tests/origin_server.py)
# and the block page's red top border (etpmitm/blockpage.py).
PICTURE_BLUE = (37, 99, 235)
BLOCK_RED = (185, 28, 28)

CHROMIUM_FLAGS = (
    # As machines/python.md runs Chromium as root: nothing in the background
    # tries the network (updates, sync, safe browsing), no QUIC.
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # origin.test is the lab origin; every other name fails without a lookup.
    f"--host-resolver-rules=MAP origin.test {ORIGIN}, MAP * ~NOTFOUND",
    "--no-proxy-server",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--hide-scrollbars",
    # Let the page's script finish (its fetches included) before the DOM is dumped.
    "--virtual-time-budget=15000",
)


def browser_unavailable() -> str | None:
    """Why this module cannot run here, or None."""
    reason = lab_unavailable()
    if reason is not None:
        return reason
    missing = [tool for tool in ("chromium", "certutil") if shutil.which(tool) is None]
    if missing:
        return (f"needs {' and '.join(missing)} (Debian packages chromium and libnss3-tools; "
                "dev/bootstrap.sh installs them)")
    return None


def build_lab() -> GatewayLab:
    return inspecting_lab(POLICY)


def png_pixels(data: bytes) -> tuple[int, int, set[tuple[int, int, int]]]:
    """Width, height and the set of RGB colours of an 8-bit, non-interlaced RGB or RGBA PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    at, idat, header = 8, b"", b""
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[i - bpp] if i >= bpp else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
            elif kind != 0:
                raise ValueError(f"bad PNG filter {kind}")
        colours.update(zip(line[0::bpp], line[1::bpp], line[2::bpp]))
        previous = line
    return width, height, colours


class BrowserEndToEndTests(TestCase):
    skip = browser_unavailable()
    env: GatewayLab

    def setUp(self) -> None:
        self.env = shared_lab(__name__, build_lab)
        self.home = Path(self.mktemp()).resolve()
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        for argv in (["-N", "--empty-password"], ["-A", "-n", "etpmitm", "-t", "C,,", "-i", str(self.env.root)]):
            self.env.lab.client.run(["certutil", "-d", f"sql:{nssdb}", *argv])

    def chromium(self, url: str, screenshot: Path) -> str:
        """Load ``url`` in headless Chromium in the client namespace; the DOM it dumps."""
        profile = self.home / "profile"
        done = self.env.lab.client.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}",
             "--dump-dom", url],
            env={"HOME": str(self.home)}, check=False, timeout=180,
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        # An untrusted certificate or a failed connection leaves no DOM at all.
        self.assertIn("<html", done.stdout, f"Chromium dumped no page; stderr:\n{done.stderr[-3000:]}")
        return done.stdout

    def assertScreenshot(self, path: Path, colour: tuple[int, int, int]) -> None:
        """``path`` is a window-sized PNG in which ``colour`` appears among others."""
        self.assertTrue(path.is_file(), f"no screenshot at {path}")
        width, height, colours = png_pixels(path.read_bytes())
        self.assertEqual((width, height), WINDOW)
        self.assertIn(colour, colours)
        self.assertGreater(len(colours), 10, "the screenshot is nearly blank")

    def audit_events(self, offset: int, paths: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The request events for ``paths`` logged after ``offset`` in the audit log, and the
        events of their connections, once all have come (or after 20 s, as far as they came)."""
        deadline = time.monotonic() + 20
        while True:
            with self.env.audit_log.open("rb") as f:
                f.seek(offset)
                events = [json.loads(line) for line in f.read().decode().splitlines()]
            requests = [e for e in events if e["event"] == "request" and e["head"]["path"] in paths]
            ids = {e["connection"] for e in requests}
            connections = [e for e in events if e["event"] == "connection" and e["id"] in ids]
            complete = {e["head"]["path"] for e in requests} == paths and len(connections) == len(ids)
            if complete or time.monotonic() > deadline:
                return requests, connections
            time.sleep(0.1)

    def assertBrowserConnection(self, connections: list[dict[str, Any]]) -> None:
        """One connection, intercepted, with h2 agreed with the browser."""
        self.assertEqual([(c["sni"], c["action"], c["alpn"], c["outcome"]) for c in connections],
                         [("origin.test", "intercept", "h2", "ok")])

    def audit_offset(self) -> int:
        path = self.env.audit_log
        return path.stat().st_size if path.exists() else 0

    def test_pageWithSubresources(self) -> None:
        """The page, its stylesheet, script and image and a fetch come over h2; a fetch of a
        blocked URL gets the block page's 403; the audit log has each request, one blocked."""
        offset = self.audit_offset()
        shot = self.home / "page.png"
        dom = self.chromium("https://origin.test/page", shot)
        self.assertIn('<h1 id="title">etpmitm lab page</h1>', dom)
        width, height = PICTURE_SIZE
        for item in (
            "script=ran",
            "css=rgb(0, 128, 0)",
            f"picture={width}x{height}",
            "data=fetched over the gateway",
            f"blocked=403 {TITLE}",
            "done=yes",
        ):
            key = item.partition("=")[0]
            self.assertIn(f'<li id="{key}">{item}</li>', dom)
        self.assertScreenshot(shot, PICTURE_BLUE)

        paths = {"/page", "/static/page.css", "/static/page.js", "/static/picture.png", "/static/data.json",
                 "/blocked/secret"}
        events, connections = self.audit_events(offset, paths)
        seen = {(e["head"]["path"], e["protocol"], e["head"]["authority"], e["action"], e["status"])
                for e in events}
        self.assertEqual(seen, {
            *((path, "h2", "origin.test", "allow", 200) for path in paths - {"/blocked/secret"}),
            ("/blocked/secret", "h2", "origin.test", "block", 403),
        })
        self.assertEqual(len(events), len(paths), events)
        [blocked] = [e for e in events if e["action"] == "block"]
        self.assertIn(RULE, blocked["rule"])
        # All of them streams of the browser's one connection.
        self.assertEqual(len({e["stream"] for e in events}), len(paths), events)
        self.assertTrue(all("HeadlessChrome/" in e["head"]["user_agent"] for e in events), events)
        self.assertBrowserConnection(connections)

    def test_blockedPage(self) -> None:
        """A blocked URL loaded as a page shows the gateway's block page, which names the URL and rule."""
        offset = self.audit_offset()
        shot = self.home / "blocked.png"
        dom = self.chromium("https://origin.test/blocked/page", shot)
        self.assertIn(f"<h1>{TITLE}</h1>", dom)
        self.assertIn("origin.test/blocked/page", dom)
        self.assertIn(RULE, dom)
        self.assertScreenshot(shot, BLOCK_RED)
        [event], connections = self.audit_events(offset, {"/blocked/page"})
        self.assertEqual((event["protocol"], event["action"], event["status"]), ("h2", "block", 403))
        self.assertIn(RULE, event["rule"])
        self.assertBrowserConnection(connections)
