#!/usr/bin/env python3
"""Whether a command that had to fail failed clearly: an error exit (not 0, not a panic's 101 or
an abort's 134), a message containing NEEDLE, and no panic. Prints one JSON line.

    python3 scripts/gpu-check/judge.py CASE LOG EXIT NEEDLE
"""

import json
import sys

case, log, rc, needle = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
text = open(log, errors="replace").read()
ok = rc not in (0, 101, 134) and needle in text and "panicked" not in text
print(json.dumps({"case": case, "exit": rc, "ok": ok, "log": text[-1500:]}))
