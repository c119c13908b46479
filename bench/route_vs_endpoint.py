"""The local stack's ``POST /predict`` against its endpoint's own ``/invocations``, and batch transform.

    .venv/bin/python bench/route_vs_endpoint.py                  # about 3 min on 2 idle CPU cores
    .venv/bin/python bench/route_vs_endpoint.py --quick          # shorter measurements
    .venv/bin/python bench/route_vs_endpoint.py --soak --image-size 64   # 32 clients, 10,000 requests via /predict

One running ``LocalStack`` (in this process) serves a model straight from a directory
(``LocalStack.deploy_model_dir``: resnet18, random weights, 133 classes, 224 px, as
bench/endpoint_throughput.py builds it), through the control plane's own requests. Measured in this
one run, side by side, with the same load generator (a separate process, stdlib only, one keep-alive
connection per client, two warm-up requests each, then back to back for ``--seconds``):

- endpoint: the endpoint's server, ``POST /invocations`` with JPEG bytes;
- route: the API, ``POST /predict`` with the same bytes (API -> control plane -> SageMaker Runtime
  stand-in -> the same server);

at 1, 8 and 32 clients, alternating endpoint and route ``--rounds`` times; then batch transform
(``dogbreeds.localaws.transform.transform_objects``, the stand-in's own code) over ``--batch-images``
objects at each ``MaxConcurrentTransforms`` of ``--transform-concurrency``, timed from a loaded server
to the last ``.out`` written, against the endpoint's best images/s above.

``--soak``: 32 clients share ``--soak-requests`` requests through ``/predict``; this process's RSS
(the whole stack: API, control plane, endpoint server) is sampled every second and printed at the
start, middle and end, with every error. Prints; asserts nothing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# bench/ is this script's directory, so its neighbour imports as it is (run as a script, not a module).
from endpoint_throughput import OthersCpu, loadavg, percentile, write_images, write_model

# ------------------------------------------------------------------------------------------ clients
# This part runs in the client process and imports nothing but the standard library.


def run_clients(url: str, path: str, clients: int, seconds: float, total: int, image_dir: str) -> dict:
    """``clients`` threads, one keep-alive connection each, POST JPEGs to ``path``: for ``seconds``
    (total 0) or until ``total`` requests have been sent between them. A failed connection is counted
    as an error and reopened."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    images = [p.read_bytes() for p in sorted(Path(image_dir).glob("*.jpg"))]
    barrier = threading.Barrier(clients + 1)
    results = [None] * clients
    left = [total]
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
        n = index
        errors = []

        def one():
            nonlocal n, conn
            body = images[n % len(images)]
            n += 1
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                status = 0
            return started, time.perf_counter(), status

        warm = [one() for _ in range(2)]
        barrier.wait()
        deadline = time.perf_counter() + seconds
        done = []
        while True:
            if total:
                with lock:
                    if left[0] <= 0:
                        break
                    left[0] -= 1
            elif time.perf_counter() >= deadline:
                break
            done.append(one())
        conn.close()
        results[index] = {"warm_status": [w[2] for w in warm], "requests": done, "errors": errors}

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    requests = [r for res in results for r in res["requests"]]
    ok = [r for r in requests if r[2] == 200]
    end = max((r[1] for r in requests), default=t0)
    bad = {}
    for r in requests:
        if r[2] != 200:
            bad[str(r[2])] = bad.get(str(r[2]), 0) + 1
    return {"clients": clients, "ok": len(ok), "errors": len(requests) - len(ok), "statuses": bad,
            "exceptions": sorted({e for res in results for e in res["errors"]})[:5],
            "warm_errors": sum(s != 200 for res in results for s in res["warm_status"]),
            "elapsed": end - t0, "latencies": sorted(r[1] - r[0] for r in ok)}


def clients_main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url")
    p.add_argument("--path")
    p.add_argument("--clients", type=int)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--total", type=int, default=0)
    p.add_argument("--image-dir")
    a = p.parse_args(argv)
    print(json.dumps(run_clients(a.url, a.path, a.clients, a.seconds, a.total, a.image_dir)))
    return 0


def measure(url: str, path: str, clients: int, image_dir: Path, seconds: float = 0.0, total: int = 0) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client-mode", "--url", url,
                          "--path", path, "--clients", str(clients), "--seconds", str(seconds),
                          "--total", str(total), "--image-dir", str(image_dir)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    lat = result["latencies"]
    result["throughput"] = result["ok"] / result["elapsed"] if result["elapsed"] > 0 else 0.0
    result["p50"], result["p99"] = percentile(lat, 50), percentile(lat, 99)
    return result


# -------------------------------------------------------------------------------------- the bench

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="--seconds 4, --rounds 1, --batch-images 96")
    p.add_argument("--image-size", type=int, default=224, help="model input size in px (default 224)")
    p.add_argument("--seconds", type=float, default=None, help="per measurement (default 8)")
    p.add_argument("--rounds", type=int, default=None, help="endpoint/route alternations per client count (default 2)")
    p.add_argument("--clients", default="1,8,32", help="client counts (default 1,8,32)")
    p.add_argument("--images", type=int, default=48, help="distinct JPEGs the clients cycle through (default 48)")
    p.add_argument("--batch-images", type=int, default=None, help="objects per transform (default 240)")
    p.add_argument("--transform-concurrency", default="1,2,8",
                   help="MaxConcurrentTransforms values to run (default 1,2,8)")
    p.add_argument("--soak", action="store_true", help="only the soak: 32 clients through /predict")
    p.add_argument("--soak-requests", type=int, default=10_000, help="requests in the soak (default 10000)")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (4.0 if args.quick else 8.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.batch_images = args.batch_images or (96 if args.quick else 240)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.transform_concurrency = [int(c) for c in args.transform_concurrency.split(",")]
    return args


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serving_stack(root: Path, model_dir: Path):
    from dogbreeds.stack import LocalStack, local_config

    stack = LocalStack(root / "stack", config=local_config("quick"), reconcile_seconds=0.5).start()
    stack.deploy_model_dir(model_dir, dataset="bench")
    deadline = time.monotonic() + 120
    while (stack.plane.status()["endpoint"] or {}).get("status") != "InService":
        if time.monotonic() > deadline:
            stack.stop()
            raise RuntimeError("the endpoint did not come into service in 120 s")
        time.sleep(0.2)
    return stack


def line(name: str, r: dict) -> str:
    return (f"{name:8s} {r['clients']:7d}  {r['throughput']:10.1f}  {r['p50'] * 1000:6.0f}  {r['p99'] * 1000:6.0f}"
            f"  {r['ok']:6d}  {r['errors']:6d}  {r.get('cpu_ms', float('nan')):6.1f}  {r['others']:5.0f}%")


def transform_rate(stack, model_dir: Path, image_dir: Path, count: int, concurrency: int) -> dict:
    """One transform of ``count`` objects through the stand-in's transform code, at ``concurrency``."""
    from batch.transform import transform_job_request
    from chalicelib.config import BatchConfig
    from dogbreeds.localaws.transform import transform_objects
    from dogbreeds.serving import ModelServer

    bucket = stack.config.bucket
    prefix = f"bench-transform/c{concurrency}"
    images = sorted(image_dir.glob("*.jpg"))
    for i in range(count):
        stack.raw_s3.put_object(Bucket=bucket, Key=f"{prefix}/input/{i:05d}.jpg",
                                Body=images[i % len(images)].read_bytes())
    settings = BatchConfig(max_concurrent_transforms=concurrency)
    record = transform_job_request(f"bench-{concurrency}", "bench", f"s3://{bucket}/{prefix}/input/",
                                   f"s3://{bucket}/{prefix}/output/", settings, [])
    loaded = []

    def factory(path):
        server = ModelServer(path)          # loads and warms the model up
        loaded.append(time.perf_counter())
        return server

    watch = OthersCpu(os.cpu_count() or 1)
    written, skipped, failures = transform_objects(stack.raw_s3, factory, record, model_dir, threading.Event())
    finished = time.perf_counter()
    return {"concurrency": concurrency, "written": written, "failures": len(failures),
            "images_per_s": written / (finished - loaded[0]), "others": watch.percent()}


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")   # EMF lines on stdout are CloudWatch's
    logging_quiet()
    loads = {"start": loadavg()}
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        root = Path(tmp)
        model_dir = write_model(root, args.image_size)
        image_dir, _, image_facts = write_images(root, args.images, 320, 640)
        stack = serving_stack(root, model_dir)
        try:
            endpoint_url = stack.sagemaker.endpoint_url(stack.endpoint_name)
            print(f"stack at {stack.api_url}, endpoint at {endpoint_url}", flush=True)
            if args.soak:
                soak(stack, args, image_dir)
                return 0
            runs = {}
            for clients in args.clients:
                for _ in range(args.rounds):
                    for name, url, path in (("endpoint", endpoint_url, "/invocations"),
                                            ("route", stack.api_url, "/predict")):
                        watch = OthersCpu(cores)
                        before = os.times()
                        r = measure(url, path, clients, image_dir, seconds=args.seconds)
                        after = os.times()
                        r["others"] = watch.percent()
                        # CPU of this process (the stack: API, control plane, endpoint server) per request
                        r["cpu_ms"] = ((after.user + after.system - before.user - before.system) * 1000
                                       / max(1, r["ok"] + r["errors"] + 2 * clients))
                        runs.setdefault((name, clients), []).append(r)
                        print("  " + line(name, r) + (f"  {r['statuses']} {r['exceptions']}" if r["errors"] else ""),
                              flush=True)
            loads["after route"] = loadavg()
            transforms = []
            for concurrency in args.transform_concurrency:
                t = transform_rate(stack, model_dir, image_dir, args.batch_images, concurrency)
                transforms.append(t)
                print(f"  transform MaxConcurrentTransforms={concurrency}: {t['images_per_s']:.1f} images/s, "
                      f"{t['written']} written, {t['failures']} failures", flush=True)
        finally:
            stack.stop()
        loads["end"] = loadavg()

    print()
    print("== route vs endpoint: ONE run on THIS machine (not an average) ==")
    print(f"  date          {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  machine       {cores} logical CPUs; load average 1/5/15 min: start {loads['start']}, "
          f"after route {loads['after route']}, end {loads['end']}")
    print(f"  model         resnet18, random weights, 133 classes, {args.image_size} px; images {image_facts}")
    print(f"  measurement   {args.seconds:g} s each, endpoint and route alternated {args.rounds} time(s) per client count")
    print()
    print("name     clients  requests/s  p50 ms  p99 ms      ok  errors  cpu ms  others")
    for (name, _), rs in runs.items():
        for r in rs:
            print(line(name, r))
    print()
    print("route / endpoint (requests/s, summed over the rounds)")
    best_endpoint = 0.0
    for clients in args.clients:
        e, r = runs[("endpoint", clients)], runs[("route", clients)]
        e_rate = sum(x["ok"] for x in e) / sum(x["elapsed"] for x in e)
        r_rate = sum(x["ok"] for x in r) / sum(x["elapsed"] for x in r)
        best_endpoint = max(best_endpoint, e_rate)
        print(f"  {clients:2d} client(s): {r_rate:.1f} / {e_rate:.1f} = {r_rate / e_rate:.3f}   (p50 route "
              f"{statistics.median(x['p50'] for x in r) * 1000:.0f} ms, endpoint "
              f"{statistics.median(x['p50'] for x in e) * 1000:.0f} ms; errors route "
              f"{sum(x['errors'] for x in r)}, endpoint {sum(x['errors'] for x in e)})")
    print("  CPU-bound ceiling (this process's CPU per request, endpoint / route): what the route's own work")
    print("  leaves when the CPUs are the limit; steadier than requests/s when other processes are busy")
    for clients in args.clients:
        e_cpu = statistics.median(x["cpu_ms"] for x in runs[("endpoint", clients)])
        r_cpu = statistics.median(x["cpu_ms"] for x in runs[("route", clients)])
        print(f"  {clients:2d} client(s): {e_cpu:.1f} / {r_cpu:.1f} ms = {e_cpu / r_cpu:.3f}  (route adds "
              f"{r_cpu - e_cpu:+.1f} ms of CPU per request)")
    print()
    print(f"batch transform, {args.batch_images} objects, timed from a loaded server to the last .out")
    for t in transforms:
        print(f"  MaxConcurrentTransforms {t['concurrency']:2d}: {t['images_per_s']:6.1f} images/s = "
              f"{t['images_per_s'] / best_endpoint:.3f} of the endpoint's best ({best_endpoint:.1f}); "
              f"{t['written']} written, {t['failures']} failures; others {t['others']:.0f}%")
    print(f"\n  bench wall time {time.perf_counter() - started:.0f} s. Every number above was measured in this run.")
    return 0


def soak(stack, args, image_dir: Path) -> None:
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mib()))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    measure(stack.api_url, "/predict", 32, image_dir, total=320)    # warm-up: every connection and thread once
    sampler.start()
    watch = OthersCpu(os.cpu_count() or 1)
    r = measure(stack.api_url, "/predict", 32, image_dir, total=args.soak_requests)
    stop.set()
    sampler.join()
    samples.append((time.perf_counter(), rss_mib()))
    rss = [m for _, m in samples]
    print()
    print("== soak: 32 clients through POST /predict, ONE run on THIS machine ==")
    print(f"  date      {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; load average {loadavg()}; "
          f"other processes {watch.percent():.0f}% CPU")
    print(f"  requests  {r['ok'] + r['errors']} sent, {r['ok']} ok, {r['errors']} errors {r['statuses']} "
          f"{r['exceptions']}; warm-up errors {r['warm_errors']}")
    print(f"  rate      {r['throughput']:.1f} requests/s over {r['elapsed']:.0f} s; p50 {r['p50'] * 1000:.0f} ms, "
          f"p99 {r['p99'] * 1000:.0f} ms")
    quarters = ", ".join(f"{q}% {rss[min(len(rss) - 1, len(rss) * q // 100)]:.0f}" for q in (0, 25, 50, 75, 100))
    print(f"  RSS MiB   start {rss[0]:.0f}, middle {rss[len(rss) // 2]:.0f}, end {rss[-1]:.0f}, "
          f"max {max(rss):.0f} ({len(rss)} samples, one a second; by elapsed time: {quarters})")


def logging_quiet() -> None:
    import logging
    logging.basicConfig(level=logging.WARNING)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-mode":
        sys.exit(clients_main(sys.argv[2:]))
    sys.exit(main())
