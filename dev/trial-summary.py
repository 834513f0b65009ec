"""Turn trial's closing line into ``N passed, N failed, N skipped``."""

import re
import sys

last = ""
for line in sys.stdin:
    if line.startswith(("PASSED", "FAILED")):
        last = line
counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last)}
passed = counts.get("successes", 0)
failed = sum(counts.get(k, 0) for k in ("failures", "errors", "expectedFailures", "unexpectedSuccesses"))
skipped = counts.get("skips", 0)
if not last:
    failed += 1  # trial died before reporting: count that as a failure
print(f"{passed} passed, {failed} failed, {skipped} skipped")
