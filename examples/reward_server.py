#!/usr/bin/env python3
"""A reward server for `fav`: serves any Python `score(images, prompts)` over HTTP with the
standard library only (protocol version 1, README "Reward server").

    python3 examples/reward_server.py --port 8700                     # the demo reward below
    python3 examples/reward_server.py --port 8700 --score mymodule:score

`score(images, prompts)` gets a list of `Image`s (`.shape` = (3, H, W), `.data` = flat
array('f') of RGB in [-1, 1]; `.to_numpy()` and `.to_pil()` import numpy / Pillow only when
called) and a list of prompts (str or None), and returns one float per image — or, when it
also returns features, a pair (rewards, features). Exceptions become HTTP 500 with the
message, which the trainer reports and retries.

Test-only switches (`--fail-first N`, `--hang`, `--garbage`, `--die-after N`) let a test check
that the trainer retries, times out and reports, rather than hanging or training on NaN.
"""

import argparse
import array
import base64
import importlib
import json
import math
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Image:
    def __init__(self, shape, data):
        self.shape = shape
        self.data = data

    def to_numpy(self):
        import numpy as np

        return np.frombuffer(self.data.tobytes(), dtype="<f4").reshape(self.shape)

    def to_pil(self):
        from PIL import Image as PILImage

        a = ((self.to_numpy().transpose(1, 2, 0).clip(-1, 1) + 1) * 127.5).round().astype("uint8")
        return PILImage.fromarray(a)


def demo_score(images, prompts):
    """A smooth reward that any image can climb: mean brightness of the red channel minus that of
    the blue one, plus a bonus when the prompt says "bright". Features: per-channel means."""
    rewards, features = [], []
    for img, prompt in zip(images, prompts):
        _, h, w = img.shape
        n = h * w
        means = [math.fsum(img.data[c * n : (c + 1) * n]) / n for c in range(3)]
        bonus = 0.1 * means[1] if prompt and "bright" in prompt else 0.0
        rewards.append(means[0] - means[2] + bonus)
        features.append(means)
    return rewards, features


def load_score(spec):
    if not spec:
        return demo_score
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "score")


def decode(body):
    req = json.loads(body)
    if req.get("version") != 1:
        raise ValueError(f"protocol version {req.get('version')!r}; this server speaks 1")
    imgs = req["images"]
    n, c, h, w = imgs["shape"]
    if imgs.get("dtype") != "float32":
        raise ValueError(f"dtype {imgs.get('dtype')!r}: expected float32")
    data = array.array("f")
    data.frombytes(base64.b64decode(imgs["data"]))
    if sys.byteorder != "little":
        data.byteswap()
    per = c * h * w
    if len(data) != n * per:
        raise ValueError(f"{len(data)} values for shape {imgs['shape']}")
    images = [Image((c, h, w), data[i * per : (i + 1) * per]) for i in range(n)]
    prompts = req.get("prompts") or [None] * n
    return images, prompts, bool(req.get("features"))


def make_handler(score, opts):
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            if opts.verbose:
                super().log_message(fmt, *args)

        def reply(self, code, payload):
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            state["requests"] += 1
            k = state["requests"]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if opts.die_after and k > opts.die_after:
                import os

                os._exit(1)
            if opts.hang:
                time.sleep(3600)
            if k <= opts.fail_first:
                return self.reply(503, {"error": f"failing request {k} on purpose"})
            if opts.garbage:
                return self.reply(200, b"<html>not a reward</html>")
            try:
                images, prompts, want_features = decode(body)
                out = score(images, prompts)
                rewards, features = out if isinstance(out, tuple) else (out, None)
                payload = {"rewards": [float(r) for r in rewards]}
                if want_features:
                    if features is None:
                        raise ValueError("features were asked for, but score() returns none")
                    payload["features"] = [[float(v) for v in f] for f in features]
                self.reply(200, payload)
            except Exception as e:  # the trainer reports it and retries
                self.reply(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--score", default="", help="module:function; default: the demo reward")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with 503")
    p.add_argument("--hang", action="store_true", help="never answer")
    p.add_argument("--garbage", action="store_true", help="answer with something that is not JSON")
    p.add_argument("--die-after", type=int, default=0, help="exit on request N+1")
    opts = p.parse_args()
    server = ThreadingHTTPServer((opts.host, opts.port), make_handler(load_score(opts.score), opts))
    print(f"reward server on http://{opts.host}:{server.server_address[1]}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
