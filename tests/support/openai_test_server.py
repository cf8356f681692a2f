#!/usr/bin/env python3
"""A small, deterministic OpenAI-compatible completions server for tests and the demo.

It stands in for vLLM / TGI / llama.cpp behind `serve` and `endpoint` models: python3 standard
library only, binds 127.0.0.1 only. Every answer is a pure function of (model name, prompt), so a
test can compute the leaderboard it must see without asking the server.

The model's rule (tests/integration/openai_rule.hpp reimplements it in C++):
  * Tokens are the matches of the regex \\s*\\S+ (a token carries its leading whitespace).
  * A token's log-probability is -(1 + (fnv1a32(model + "|" + token) % 1000) / 100).
  * Generation: the prompt's last "A+B" or "A*B" (non-negative integers) is evaluated; the model
    answers right when fnv1a32(model + "|" + prompt) % 100 < skill (--skill, default 70), else
    it answers the value plus one. The text is " VALUE" or, with --verbose, " The answer is VALUE."
    A prompt without such an expression gets " unknown". max_tokens and stop are applied.
  * With echo and logprobs, the prompt's tokens come back with their log-probabilities and
    character offsets (the first token's log-probability is null, as OpenAI's API does), then
    the generated ones.

Failure knobs: --load-seconds (health answers 503 meanwhile, requests 503 too), --never-ready,
--exit-during-load CODE (never ready; exits with CODE halfway through --load-seconds), --crash-after N completions, --burst-429 K:M (K of every M completion
requests answer 429 with Retry-After), --retry-after S, --latency-ms.

GET /health, GET /v1/models, POST /v1/completions, GET /stats (counts, for benchmarks).
"""
import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = re.compile(r"\s*\S+")
EXPRESSION = re.compile(r"(\d+)\s*([+*])\s*(\d+)")


def fnv1a32(text):
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def tokenize(text, base=0):
    return [(m.group(0), base + m.start()) for m in TOKEN.finditer(text)]


def token_logprob(model, token):
    return -(1.0 + (fnv1a32(model + "|" + token) % 1000) / 100.0)


def generate(model, prompt, skill, verbose):
    found = EXPRESSION.findall(prompt)
    if not found:
        return " unknown"
    a, op, b = found[-1]
    value = int(a) + int(b) if op == "+" else int(a) * int(b)
    if fnv1a32(model + "|" + prompt) % 100 >= skill:
        value += 1
    return " The answer is %d." % value if verbose else " %d" % value


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.completions = 0
        self.requests_429 = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def ready(self):
        if self.args.never_ready or self.args.exit_during_load is not None:
            return False
        return time.monotonic() - self.started >= self.args.load_seconds


def make_handler(state):
    args = state.args

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *values):  # quiet: stderr is for the worker's error tail
            if args.access_log:
                sys.stderr.write("access " + (fmt % values) + "\n")

        def send_json(self, status, value, headers=()):
            body = json.dumps(value).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, content in headers:
                self.send_header(name, content)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                if state.ready():
                    self.send_json(200, {"status": "ok"})
                else:
                    self.send_json(503, {"status": "loading"})
            elif self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            elif self.path == "/stats":
                with state.lock:
                    self.send_json(200, {"completions": state.completions,
                                         "rejected_429": state.requests_429,
                                         "prompt_tokens": state.prompt_tokens,
                                         "completion_tokens": state.completion_tokens})
            else:
                self.send_json(404, {"error": {"message": "no route " + self.path}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != "/v1/completions":
                return self.send_json(404, {"error": {"message": "no route " + self.path}})
            if not state.ready():
                return self.send_json(503, {"error": {"message": "model is loading"}})
            if args.api_key and self.headers.get("Authorization") != "Bearer " + args.api_key:
                return self.send_json(401, {"error": {"message": "invalid api key"}})
            with state.lock:
                state.completions += 1
                number = state.completions
                if args.burst_429:
                    k, m = args.burst_429
                    if (number - 1) % m < k:
                        state.requests_429 += 1
                        reject = True
                    else:
                        reject = False
                else:
                    reject = False
            if args.crash_after and number > args.crash_after:
                sys.stderr.write("fatal: CUDA error: an illegal memory access was encountered "
                                 "(test server crashing after %d requests)\n" % args.crash_after)
                sys.stderr.flush()
                os._exit(3)
            if reject:
                return self.send_json(429, {"error": {"message": "rate limited"}},
                                      headers=[("Retry-After", str(args.retry_after))])
            try:
                request = json.loads(raw)
            except ValueError:
                return self.send_json(400, {"error": {"message": "body is not JSON"}})
            model = request.get("model")
            if model != args.model:
                return self.send_json(404, {"error": {"message": "model %r does not exist" % model}})
            prompt = request.get("prompt")
            if not isinstance(prompt, str):
                return self.send_json(400, {"error": {"message": "prompt must be a string"}})
            if args.latency_ms:
                time.sleep(args.latency_ms / 1000.0)
            max_tokens = int(request.get("max_tokens", 16))
            text = generate(model, prompt, args.skill, args.verbose)
            generated = tokenize(text)[:max_tokens]
            text = "".join(token for token, _ in generated)
            stop = request.get("stop")
            stops = [stop] if isinstance(stop, str) else (stop or [])
            finish = "length" if len(generated) == max_tokens else "stop"
            for s in stops:
                at = text.find(s)
                if at >= 0:
                    text = text[:at]
                    finish = "stop"
            generated = tokenize(text)
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            prompt_tokens = tokenize(prompt)
            if request.get("logprobs") is not None:
                echoed = prompt_tokens if request.get("echo") else []
                out_tokens = echoed + [(t, len(prompt) + o) for t, o in generated]
                logprobs = [token_logprob(model, t) for t, _ in out_tokens]
                if request.get("echo") and logprobs:
                    logprobs[0] = None
                choice["logprobs"] = {
                    "tokens": [t for t, _ in out_tokens],
                    "token_logprobs": logprobs,
                    "text_offset": [o for _, o in out_tokens],
                    "top_logprobs": None,
                }
            if request.get("echo"):
                choice["text"] = prompt + text
            with state.lock:
                state.prompt_tokens += len(prompt_tokens)
                state.completion_tokens += len(generated)
            self.send_json(200, {
                "id": "cmpl-%d" % number, "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": [choice],
                "usage": {"prompt_tokens": len(prompt_tokens),
                          "completion_tokens": len(generated),
                          "total_tokens": len(prompt_tokens) + len(generated)}})

    return Handler


class Server(ThreadingHTTPServer):
    # Class attributes: listen() reads the backlog in the constructor. The default of 5 drops
    # connections (and costs clients a 1 s SYN retransmit) as soon as 64 arrive at once.
    request_queue_size = 1024
    daemon_threads = True


def parse_burst(text):
    k, _, m = text.partition(":")
    k, m = int(k), int(m)
    if not 0 < k < m:
        raise argparse.ArgumentTypeError("--burst-429 wants K:M with 0 < K < M")
    return k, m


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--skill", type=int, default=70, help="percent of arithmetic answered right")
    parser.add_argument("--verbose", action="store_true", help='answer " The answer is N."')
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--exit-during-load", type=int, default=None, metavar="CODE")
    parser.add_argument("--crash-after", type=int, default=0, metavar="N")
    parser.add_argument("--burst-429", type=parse_burst, default=None, metavar="K:M")
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=os.environ.get("TEST_SERVER_API_KEY", ""))
    parser.add_argument("--pid-file", default="", help="write our pid here once listening")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()

    state = State(args)
    server = Server(("127.0.0.1", args.port), make_handler(state))
    sys.stderr.write("test server: model=%s port=%d gpus=%s loading for %.1fs\n" % (
        args.model, server.server_address[1], os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        args.load_seconds))
    sys.stderr.flush()
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write("%d\n" % os.getpid())
    if args.exit_during_load is not None:
        def die():
            time.sleep(args.load_seconds / 2)
            sys.stderr.write("error: cannot load weights: out of memory (test server)\n")
            sys.stderr.flush()
            os._exit(args.exit_during_load)
        threading.Thread(target=die, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
