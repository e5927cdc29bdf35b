#!/usr/bin/env python3
"""Two weight files of the same model, tensor by tensor: the largest difference relative to the
largest magnitude of each tensor, and overall; one JSON object.

    python3 scripts/gpu-check/compare.py A.safetensors B.safetensors
"""

import json
import sys

from safetensors.numpy import load_file

a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
if sorted(a) != sorted(b):
    sys.exit(f"different tensors: {sorted(set(a) ^ set(b))}")
rel = {}
for name in sorted(a):
    x, y = a[name].astype("float64"), b[name].astype("float64")
    scale = max(abs(x).max(), 1e-30)
    rel[name] = float(abs(x - y).max() / scale)
print(json.dumps({"max_relative": max(rel.values()), "per_tensor": rel, "a": sys.argv[1], "b": sys.argv[2]}))
