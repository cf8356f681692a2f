#!/usr/bin/env python3
"""evald exec runner that evaluates one shard with lm-evaluation-harness against the warm server.

Written against lm-evaluation-harness's documented interface (>= 0.4.9: `--model
local-completions`, `--samples`, `--log_samples`, `--output_path`); see README.md: it has not
been run in evald's own test suite.

Reads the shard from stdin (docs/runners.md), asks lm_eval to evaluate exactly the shard's
examples of the benchmark's task through the model server evald started (EVALD_ENDPOINT,
EVALD_SERVED_MODEL), and prints {"metrics", "count", "samples"} on stdout.

Benchmark params: "task" (default: the benchmark's name), "metric" (lm_eval's key, default
"acc,none"), "num_concurrent" (default 8), "tokenizer" (default: the served model name; used by
local-completions for loglikelihood requests).
"""
import glob
import json
import os
import subprocess
import sys
import tempfile


def main():
    shard = json.loads(sys.stdin.readline())
    params = shard["benchmark"]["params"]
    task = params.get("task", shard["benchmark"]["name"])
    metric = params.get("metric", "acc,none")
    start, end = shard["shard"]["start"], shard["shard"]["end"]
    endpoint = os.environ["EVALD_ENDPOINT"]
    model = os.environ["EVALD_SERVED_MODEL"]
    model_args = ",".join([
        "model=" + model,
        "base_url=" + endpoint + "/completions",
        "num_concurrent=%d" % int(params.get("num_concurrent", 8)),
        "tokenizer=" + params.get("tokenizer", model),
        "tokenized_requests=False",
    ])
    with tempfile.TemporaryDirectory(dir=".") as out:
        command = [
            "lm_eval", "--model", "local-completions", "--model_args", model_args,
            "--tasks", task, "--samples", json.dumps({task: list(range(start, end))}),
            "--output_path", out, "--log_samples",
        ]
        print("running: " + " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True, stdout=sys.stderr)
        results_files = sorted(glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True))
        if not results_files:
            sys.exit("lm_eval wrote no results_*.json under " + out)
        with open(results_files[-1]) as f:
            results = json.load(f)["results"][task]
        samples = []
        key = metric.split(",")[0]
        for path in glob.glob(os.path.join(out, "**", "samples_%s_*.jsonl" % task), recursive=True):
            with open(path) as f:
                for line in f:
                    record = json.loads(line)
                    doc_id = record["doc_id"]
                    # With --samples, doc_id is the position in the task's document list.
                    samples.append({"index": doc_id, "score": float(record.get(key, 0.0)),
                                    "target": record.get("target")})
    samples.sort(key=lambda s: s["index"])
    print(json.dumps({"metrics": {"accuracy": float(results[metric])}, "count": end - start,
                      "samples": samples}))


if __name__ == "__main__":
    main()
