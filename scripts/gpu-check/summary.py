#!/usr/bin/env python3
"""The GPU check's results under OUT, gathered into OUT/gpu-check.json and printed as a table:
each part's status, the test counts, fav's step against PyTorch's (ratio, images per second,
peak GPU memory) and the toy job's CPU/GPU agreement.

    python3 scripts/gpu-check/summary.py OUT
"""

import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])


def read_json(name):
    p = out / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def torch_line(name):
    """The last JSON line of a PyTorch log."""
    try:
        lines = [ln for ln in (out / f"{name}.log").read_text().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except OSError:
        return None


def mem(name):
    try:
        return int((out / f"{name}.mem").read_text().strip()) * 2**20
    except (OSError, ValueError):
        return None


def tests(name):
    try:
        text = (out / f"{name}.log").read_text()
    except OSError:
        return None
    m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    # libtest's closing list (with --nocapture a test's "FAILED" need not share its name's line).
    tail = text.rsplit("\nfailures:\n", 1)
    failed = re.findall(r"^    (\S+)$", tail[1].split("\n\n")[0], re.M) if len(tail) == 2 else []
    return {"result": m[-1][0], "passed": int(m[-1][1]), "failed": int(m[-1][2]), "failures": failed} if m else None


def read_jsonl(name):
    """One object per line; None when the part wrote no file."""
    p = out / name
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else None


parts, refusals = read_jsonl("parts.jsonl") or [], read_jsonl("refusals.jsonl")
doc = {"machine": (out / "machine.txt").read_text().strip() if (out / "machine.txt").exists() else None,
       "parts": parts, "refusals": refusals, "tests": tests("tests"), "tests_stress": tests("tests-stress"),
       "tf32_torch": torch_line("tf32-torch"), "toy": read_json("toy.json"),
       "toy_repeat": read_json("toy-repeat.json"), "oom": read_json("oom.json"),
       "sample": read_json("sample.json"), "steps": {}}
for case in ["tiny", "0.6b-ckpt-true", "0.6b-ckpt-false"]:
    fav_name = "tiny-fav" if case == "tiny" else case.replace("0.6b", "0.6b-fav")
    torch_name = "tiny-torch" if case == "tiny" else case.replace("0.6b", "0.6b-torch")
    f, t = read_json(f"{fav_name}.json"), torch_line(torch_name)
    row = {"fav": f, "torch": t, "fav_peak_gpu_bytes": mem(fav_name), "torch_peak_gpu_bytes_smi": mem(torch_name)}
    if f and t:
        fs = f["step"]["step"]["median_s"]
        row["fav_median_s"], row["torch_median_s"] = fs, t["median_s"]
        row["ratio_fav_to_torch"] = fs / t["median_s"]
        row["fav_images_per_s"] = 2 * f["step"]["batch"] / fs
    doc["steps"][case] = row
(out / "gpu-check.json").write_text(json.dumps(doc, indent=2))

print(doc["machine"])
for p in parts:
    print(f"{p['part']:<22} {p['status']}" + (f" ({p['seconds']} s)" if "seconds" in p else ""))
for k in ["tests", "tests_stress"]:
    print(k, doc[k])
if doc["tf32_torch"]:
    print("PyTorch on the SANA fixture here (max error / scale):", doc["tf32_torch"])
for r in doc["refusals"] or []:
    print(f"refused {r['case']}: exit {r['exit']}, {'clear error' if r['ok'] else 'NOT a clear error'}")
if doc["sample"]:
    print("fav sample, tiny pipeline vs diffusers' images: max relative difference", doc["sample"]["max_relative"])
if doc["oom"]:
    print(f"step too big for the GPU: exit {doc['oom']['exit']}, {'clear error' if doc['oom']['ok'] else 'NOT a clear error'}")
if doc["toy"]:
    print("toy job, final weights GPU vs CPU: max relative difference", doc["toy"]["max_relative"])
if doc["toy_repeat"]:
    print("toy job, the GPU run twice: max relative difference", doc["toy_repeat"]["max_relative"], "(0: same bits)")
gib = lambda b: f"{b / 2**30:.1f} GiB" if b else "-"
for case, r in doc["steps"].items():
    if "ratio_fav_to_torch" in r:
        print(f"{case:<16} fav {r['fav_median_s']:.3f} s  torch {r['torch_median_s']:.3f} s  ratio {r['ratio_fav_to_torch']:.2f}"
              f"  fav {r['fav_images_per_s']:.1f} img/s  peak GPU fav {gib(r['fav_peak_gpu_bytes'])}"
              f" torch {gib((r['torch'] or {}).get('peak_reserved'))} reserved")
    else:
        print(f"{case:<16} incomplete (fav: {'yes' if r['fav'] else 'no'}, torch: {'yes' if r['torch'] else 'no'})")
