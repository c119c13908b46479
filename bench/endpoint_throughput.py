"""Endpoint throughput: the local SageMaker endpoint server, eager and with its serving variant, vs the raw model.

    .venv/bin/python bench/endpoint_throughput.py                 # about 4 min on 2 idle CPU cores
    .venv/bin/python bench/endpoint_throughput.py --quick         # about 2 min: shorter measurements
    .venv/bin/python bench/endpoint_throughput.py --image-size 112 --seconds 8 --clients 1,8,32

One model (resnet18 with random weights, 133 classes, 224 px: what the training defaults serve), packed
as the training job packs it (model.pth, model.json, code/inference.py), and synthetic JPEGs of
photo-like sizes. Its serving variants are checked against eager fp32 on those images as the training
job checks them on the validation split (``check_variants``; the images' labels are eager's own top-1,
so the accuracy rule reduces to top-1 agreement) and recorded in model.json. Measured in this one run,
side by side:

(a) raw: ``LoadedModel.probabilities`` on already preprocessed tensors for batch sizes 1..32, in both
    layouts a CPU can run them: one forward at a time with a team of every core, and one
    single-threaded forward per core at once (images/s; the best of all is the practical limit), for
    eager fp32 (the eager limit) and for the variant ``model_fn`` chooses;
(b) ``dogbreeds.serving.ModelServer`` with its defaults, over HTTP, 1/8/32 concurrent clients sending
    JPEG bytes, serving: ``eager`` (DOGBREEDS_INFERENCE_VARIANT=eager), ``ours`` (the variant model_fn
    chooses), ``fp32`` (the exact variant fp32-frozen-cl, forced);
(c) serial (``--kinds serial``): a server that handles one request at a time (input_fn, predict_fn,
    output_fn per request, batch of 1, torch's default threads), same clients;
and, for a lone request, decode + preprocess and a batch-1 forward timed directly.

The clients run in a separate process (stdlib only), one keep-alive connection each; after two
warm-up requests per client they send back to back for ``--seconds``. Throughput counts every request
finished after the start, over the time until the last one finished. Each measurement also reports
how much CPU other processes took meanwhile. Prints a table and the ratios; asserts nothing. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ clients
# This part runs in the client process and imports nothing but the standard library.

def run_clients(url: str, clients: int, seconds: float, image_dir: str) -> dict:
    host_port = url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    images = [p.read_bytes() for p in sorted(Path(image_dir).glob("*.jpg"))]
    barrier = threading.Barrier(clients + 1)
    results = [None] * clients

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
        n = index

        def one() -> tuple[float, float, int]:
            nonlocal n
            body = images[n % len(images)]
            n += 1
            started = time.perf_counter()
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return started, time.perf_counter(), response.status

        warm = [one() for _ in range(2)]
        barrier.wait()
        deadline = time.perf_counter() + seconds
        done = []
        while time.perf_counter() < deadline:
            done.append(one())
        conn.close()
        results[index] = {"warm_status": [w[2] for w in warm], "requests": done}

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
    return {"clients": clients, "ok": len(ok), "errors": len(requests) - len(ok),
            "warm_errors": sum(s != 200 for res in results for s in res["warm_status"]),
            "elapsed": end - t0, "latencies": sorted(r[1] - r[0] for r in ok)}


def clients_main(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url")
    p.add_argument("--clients", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--image-dir")
    a = p.parse_args(argv)
    print(json.dumps(run_clients(a.url, a.clients, a.seconds, a.image_dir)))
    return 0


def measure_server(url: str, clients: int, seconds: float, image_dir: Path) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client-mode", "--url", url,
                          "--clients", str(clients), "--seconds", str(seconds), "--image-dir", str(image_dir)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    lat = result["latencies"]
    result["throughput"] = result["ok"] / result["elapsed"] if result["elapsed"] > 0 else 0.0
    result["p50"] = percentile(lat, 50)
    result["p99"] = percentile(lat, 99)
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ------------------------------------------------------------------------------- the serial baseline

def serial_server(model_dir: Path, torch_threads: int):
    """One request at a time: input_fn, predict_fn (batch of 1), output_fn under one lock.

    Connections are accepted by threads (keep-alive clients must not block each other's connection),
    but only one request is decoded, predicted and serialized at a time.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import torch

    from dogbreeds.serving import load_handlers

    module = load_handlers(model_dir)
    model = module.model_fn(str(model_dir))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                with lock:
                    if torch.get_num_threads() != torch_threads:
                        torch.set_num_threads(torch_threads)
                    data = module.input_fn(body, self.headers.get("Content-Type"))
                    reply, reply_type = module.output_fn(module.predict_fn(data, model), JSON)
                status, payload = 200, reply.encode()
            except module.ClientError as exc:
                status, payload = exc.status_code, json.dumps({"message": exc.message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


JSON = "application/json"
# Server kinds -> the DOGBREEDS_INFERENCE_VARIANT they are loaded with ("" = model_fn chooses).
SERVER_KINDS = {"eager": "eager", "ours": "", "fp32": "fp32-frozen-cl", "serial": "eager"}


# -------------------------------------------------------------------------------------- the bench

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="shorter measurements (--seconds 5, --raw-seconds 2)")
    p.add_argument("--image-size", type=int, default=224, help="model input size in px (default 224)")
    p.add_argument("--seconds", type=float, default=None, help="per server and client count (default 10)")
    p.add_argument("--raw-seconds", type=float, default=None, help="per raw batch size and layout (default 3)")
    p.add_argument("--clients", default="1,8,32", help="client counts (default 1,8,32)")
    p.add_argument("--batch-sizes", default="1,4,8,16,32", help="raw forward batch sizes (default 1,4,8,16,32)")
    p.add_argument("--max-batch-size", type=int, default=None, help="server max_batch_size (default: its own)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="server max_wait_ms (default: its own)")
    p.add_argument("--torch-threads", type=int, default=None, help="server torch_threads (default: its own)")
    p.add_argument("--forward-workers", type=int, default=None, help="server forward_workers (default: its own)")
    p.add_argument("--images", type=int, default=48, help="distinct JPEGs the clients cycle through (default 48)")
    p.add_argument("--min-side", type=int, default=320, help="smallest JPEG side in px (default 320)")
    p.add_argument("--max-side", type=int, default=640, help="largest JPEG side in px (default 640)")
    p.add_argument("--kinds", default="eager,ours,fp32",
                   help=f"servers to measure, of {','.join(SERVER_KINDS)} (default eager,ours,fp32)")
    args = p.parse_args(argv)
    args.kinds = [k for k in SERVER_KINDS if k in args.kinds.split(",")]
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    args.raw_seconds = args.raw_seconds or (1.5 if args.quick else 3.0)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def write_model(root: Path, image_size: int) -> Path:
    import shutil

    import torch

    from dogbreeds.synthetic import breed_folder_names
    from model_code import inference as inf

    classes = breed_folder_names(133)
    model_dir = root / "model"
    (model_dir / "code").mkdir(parents=True)
    torch.manual_seed(0)
    net = inf.build_network("resnet18", len(classes))
    torch.save(net.state_dict(), model_dir / "model.pth")
    meta = {"format_version": 1, "arch": "resnet18", "image_size": image_size, "classes": classes,
            "normalization": {"mean": list(inf.IMAGENET_MEAN), "std": list(inf.IMAGENET_STD)}}
    (model_dir / "model.json").write_text(json.dumps(meta))
    shutil.copy(inf.__file__, model_dir / "code" / "inference.py")
    return model_dir


def write_images(root: Path, count: int, min_side: int, max_side: int) -> tuple[Path, list[bytes], str]:
    import numpy as np

    from dogbreeds.synthetic import _image_size, render_image

    image_dir = root / "images"
    image_dir.mkdir()
    blobs, sizes = [], []
    for i in range(count):
        rng = np.random.default_rng([7, i])
        size = _image_size(rng, min_side, max_side)
        path = image_dir / f"{i:03d}.jpg"
        render_image(i % 133, rng, size).save(path, "JPEG", quality=int(rng.integers(80, 95)))
        blobs.append(path.read_bytes())
        sizes.append(size)
    mean_px = statistics.mean(w * h for w, h in sizes)
    facts = (f"{count} synthetic JPEGs, sides {min_side}..{max_side} px (mean {mean_px / 1e3:.0f} kpx), "
             f"mean {statistics.mean(map(len, blobs)) / 1024:.0f} KiB")
    return image_dir, blobs, facts


class OthersCpu:
    """CPU time other processes took while a phase ran, as a % of all usable CPUs: machine-wide busy
    time (/proc/stat, steal included) minus this process and its waited-for children (the clients)."""

    def __init__(self, cores: int):
        self.cores = cores
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
        except OSError:
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic(), busy

    def percent(self) -> float:
        end = self._read()
        if self.start is None or end is None:
            return float("nan")
        busy, ours, wall, _ = (e - s for e, s in zip(end, self.start))
        self.idle = max(0.0, 1 - busy / max(wall * self.cores, 1e-9)) * 100
        return max(0.0, busy - ours) / max(wall * self.cores, 1e-9) * 100


def loaded_with(variant: str, load):
    """``load()`` with DOGBREEDS_INFERENCE_VARIANT set to ``variant`` ("" = unset), restored after."""
    saved = os.environ.pop("DOGBREEDS_INFERENCE_VARIANT", None)
    if variant:
        os.environ["DOGBREEDS_INFERENCE_VARIANT"] = variant
    try:
        return load()
    finally:
        os.environ.pop("DOGBREEDS_INFERENCE_VARIANT", None)
        if saved is not None:
            os.environ["DOGBREEDS_INFERENCE_VARIANT"] = saved


def record_variants(module, model, decoded, model_dir: Path) -> dict:
    """Check the serving variants on the bench images against eager (labels: eager's own top-1) and
    record them in model.json, as the training job does with the validation split."""
    batches = []
    for start in range(0, len(decoded), 8):
        x = model.preprocess(decoded[start:start + 8])
        batches.append((x, model.probabilities(x).argmax(1)))
    checks = {name: c.record() for name, c in module.check_variants(model.network, batches).items()}
    meta = json.loads((model_dir / "model.json").read_text())
    meta["variants"] = checks
    (model_dir / "model.json").write_text(json.dumps(meta))
    return checks


def timed(fn, min_seconds: float, min_runs: int = 3) -> list[float]:
    fn()  # warm-up
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def raw_streams(model, batch, streams: int, threads: int, seconds: float) -> dict:
    """``streams`` threads, each running forwards of ``batch`` back to back with ``threads`` torch
    threads, for ``seconds``: images/s over all of them, and the median forward time."""
    import torch

    barrier = threading.Barrier(streams + 1)
    stop = threading.Event()
    times: list[list[float]] = [[] for _ in range(streams)]

    def stream(i: int) -> None:
        torch.set_num_threads(threads)
        model.probabilities(batch)  # warm-up for this thread and thread count
        barrier.wait()
        while not stop.is_set():
            t = time.perf_counter()
            model.probabilities(batch)
            times[i].append(time.perf_counter() - t)

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or min(map(len, times)) < 2:
        time.sleep(0.02)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    forwards = sum(map(len, times))
    return {"throughput": forwards * int(batch.shape[0]) / elapsed, "forwards": forwards,
            "median": statistics.median(t for ts in times for t in ts)}


def main(argv=None) -> int:
    args = parse_args(argv)
    bench_started = time.perf_counter()
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    import torch
    import torchvision

    from dogbreeds.serving import ModelServer, load_handlers
    from dogbreeds.serving_threads import default_threads, usable_cores

    cores = usable_cores()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = default_threads(cores, device, args.torch_threads, args.forward_workers)
    loads = {"start": loadavg()}

    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        root = Path(tmp)
        model_dir = write_model(root, args.image_size)
        image_dir, blobs, image_facts = write_images(root, args.images, args.min_side, args.max_side)

        module = load_handlers(model_dir)
        model = loaded_with("eager", lambda: module.model_fn(str(model_dir)))
        decoded = [module.input_fn(b, "image/jpeg").images[0] for b in blobs]
        checks = record_variants(module, model, decoded, model_dir)
        chosen = loaded_with("", lambda: module.model_fn(str(model_dir)))
        for name, c in checks.items():
            print(f"variant {name}: {'passed' if c['passed'] else 'failed'} on {c['images']} images: top-1 agreement "
                  f"{c['top1_agreement']}, max probability difference {c['max_prob_diff']:.2g} {c['reason']}")
        print(f"model_fn chooses: {chosen.variant}", flush=True)
        models = {"eager": model, **({chosen.variant: chosen} if chosen.variant != "eager" else {})}

        # (a) raw forwards on preprocessed tensors, in the two layouts a CPU can run them: one
        # forward at a time with every core, or one single-threaded forward per core at once
        layouts = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
        if (plan.forward_workers, plan.torch_threads) not in layouts:
            layouts.append((plan.forward_workers, plan.torch_threads))
        print(f"raw forward ({args.raw_seconds:g} s per batch size and layout) ...", flush=True)
        raw, raw_variant = {}, {}
        for bs in args.batch_sizes:
            batch = model.preprocess([decoded[i % len(decoded)] for i in range(bs)])
            for streams, threads in layouts:
                for name, m in models.items():
                    watch = OthersCpu(cores)
                    r = raw_streams(m, batch, streams, threads, args.raw_seconds)
                    r["others"] = watch.percent()
                    (raw if name == "eager" else raw_variant)[(bs, streams, threads)] = r
                    print(f"  {name:14s} batch {bs:2d}, {streams} x {threads} thread(s): {r['throughput']:6.1f} "
                          f"images/s ({r['median'] * 1000:.1f} ms per forward, {r['forwards']} forwards; "
                          f"other processes {r['others']:.0f}% CPU)", flush=True)
        best_key = max(raw, key=lambda k: raw[k]["throughput"])
        best = raw[best_key]["throughput"]

        # what a lone request costs done directly: decode + preprocess, then a batch-1 forward
        def in_thread(fn, threads):
            out = []
            t = threading.Thread(target=lambda: (torch.set_num_threads(threads), out.append(fn())))
            t.start()
            t.join()
            return out[0]

        decode_one = in_thread(lambda: statistics.median(timed(  # mean over the images the clients send
            lambda: [model.preprocess(module.input_fn(b, "image/jpeg").images) for b in blobs], 1.0))
            / len(blobs), 1)
        one = model.preprocess(decoded[:1])
        forward_one = {threads: in_thread(lambda: statistics.median(timed(lambda: model.probabilities(one), 1.0)),
                                          threads)
                       for threads in sorted({1, cores})}
        loads["after raw"] = loadavg()

        # (b) ours and (c) serial, same clients
        runs = {}
        kinds = args.kinds
        served = {}
        server_kwargs = {k: v for k, v in (("max_batch_size", args.max_batch_size),
                                           ("max_wait_ms", args.max_wait_ms),
                                           ("torch_threads", args.torch_threads),
                                           ("forward_workers", args.forward_workers)) if v is not None}
        bs, streams, threads = best_key
        best_batch = model.preprocess([decoded[i % len(decoded)] for i in range(bs)])

        def remeasure(when: str) -> None:
            # The best raw layout again, between the server runs: the machine drifts (a 2-vCPU guest
            # varies by +-10% from minute to minute), and the maximum of ten noisy sweep numbers is
            # biased upwards. The reference for the ratios is the median of all its measurements.
            watch = OthersCpu(cores)
            r = raw_streams(model, best_batch, streams, threads, args.raw_seconds)
            recheck.append((when, r["throughput"], watch.percent()))
            print(f"  raw best layout again ({when}): {r['throughput']:.1f} images/s", flush=True)

        recheck = [("sweep", best, raw[best_key]["others"])]
        for clients in args.clients:
            if clients != 1:
                remeasure(f"before {clients} clients")
            for kind in kinds:
                print(f"{kind}: {clients} client(s) for {args.seconds:g} s ...", flush=True)
                if kind != "serial":
                    server = loaded_with(SERVER_KINDS[kind], lambda: ModelServer(model_dir, **server_kwargs)).start()
                    url, stop = server.url, server.stop
                    served[kind] = getattr(server._current.model, "variant", "?")
                else:
                    server = None
                    url, stop = loaded_with(SERVER_KINDS[kind], lambda: serial_server(model_dir, cores))
                try:
                    watch = OthersCpu(cores)
                    before = os.times()
                    result = measure_server(url, clients, args.seconds, image_dir)
                    after = os.times()
                    result["others"] = watch.percent()
                    answered = result["ok"] + result["errors"] + 2 * clients  # with the warm-up requests
                    result["server_cpu"] = (after.user + after.system - before.user - before.system) / answered
                    result["client_cpu"] = (after.children_user + after.children_system
                                            - before.children_user - before.children_system) / answered
                    result["idle"] = watch.idle
                    if server is not None:
                        result["stats"] = server.stats()
                finally:
                    stop()
                result["load"] = loadavg()
                runs[(kind, clients)] = result
                print(f"  {result['throughput']:6.1f} requests/s, p50 {result['p50'] * 1000:.0f} ms, "
                      f"p99 {result['p99'] * 1000:.0f} ms, {result['ok']} ok, {result['errors']} errors "
                      f"(other processes {result['others']:.0f}% CPU, CPUs idle {result['idle']:.0f}%)", flush=True)

        remeasure("at the end")
        loads["end"] = loadavg()

        report(args, torch, torchvision, cores, plan, device, image_facts, raw, best_key, best,
               recheck, decode_one, forward_one, runs, kinds, loads, time.perf_counter() - bench_started,
               checks, chosen.variant, raw_variant, served)
    return 0


def report(args, torch, torchvision, cores, plan, device, image_facts, raw, best_key, best, recheck,
           decode_one, forward_one, runs, kinds, loads, wall, checks, chosen, raw_variant, served) -> None:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print()
    print("== endpoint throughput: ONE run on THIS machine (not an average) ==")
    print(f"  date           {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  machine        {cpu}; {os.cpu_count()} logical CPUs, {cores} usable; device {device}")
    print(f"  torch          {torch.__version__} (torchvision {torchvision.__version__}), python {platform.python_version()}")
    print(f"  load average   1/5/15 min: start {loads['start']}, after raw {loads['after raw']}, end {loads['end']}")
    print(f"  model          resnet18, random weights, 133 classes, {args.image_size} px")
    print(f"  images         {image_facts}")
    lone = f", lone requests {plan.lone_threads} threads when measured faster" if plan.lone_threads else ""
    print(f"  ours           {plan.forward_workers} forward worker(s) x {plan.torch_threads} torch thread(s)"
          f"{lone}; {plan.decode_slots} decode slot(s); max batch "
          f"{args.max_batch_size or 'default'}, max wait {'default' if args.max_wait_ms is None else args.max_wait_ms} ms")
    print(f"  serial         one request at a time, batch of 1, {cores} torch thread(s) (torch's default)")
    print("  variants       checked on the bench images against eager (labels = eager's top-1): "
          + "; ".join(f"{n} {'passed' if c['passed'] else 'FAILED'} (agreement {c['top1_agreement']}, "
                      f"max prob diff {c['max_prob_diff']:.2g})" for n, c in checks.items()))
    print(f"  served         model_fn chooses {chosen}; the servers served: "
          + ", ".join(f"{k} = {v}" for k, v in served.items()))
    print()
    print("(a) raw forward on preprocessed tensors (LoadedModel.probabilities); layout = concurrent")
    print(f"    forwards x torch threads each; eager = the eager limit, then the chosen variant ({chosen})")
    print("  batch  layout  images/s  ms/forward  forwards  others   variant images/s  x eager")
    for (bs, streams, threads), r in raw.items():
        mark = "  <- best" if (bs, streams, threads) == best_key else ""
        v = raw_variant.get((bs, streams, threads))
        fast = f"   {v['throughput']:16.1f}  {v['throughput'] / r['throughput']:7.2f}" if v else ""
        print(f"  {bs:5d}  {streams:>2} x {threads:<2} {r['throughput']:8.1f}  {r['median'] * 1000:10.1f}  "
              f"{r['forwards']:8d}  {r['others']:5.0f}%{fast}{mark}")
    reference = statistics.median(r[1] for r in recheck)
    print(f"  the best layout (batch {best_key[0]}, {best_key[1]} x {best_key[2]}) measured {len(recheck)} times in "
          f"this run: " + ", ".join(f"{t:.1f} ({when}, others {o:.0f}%)" for when, t, o in recheck))
    print(f"  -> reference = their median, {reference:.1f} images/s (the sweep's maximum: {best:.1f})")
    print()
    print("(b) dogbreeds.serving.ModelServer: eager = eager fp32 forced, ours = the variant model_fn chose,")
    print("    fp32 = fp32-frozen-cl forced   (c) serial = one request at a time, batch of 1")
    print("  server  clients  requests/s  p50 ms  p99 ms      ok  errors  mean batch  forward busy  others")
    for (kind, clients), r in runs.items():
        st = r.get("stats")
        if st:
            sizes = {int(k): v for k, v in st["batch_sizes"].items()}
            mean_batch = f"{sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())):10.1f}"
            # forward time of the measured requests only (the stats also hold the warm-up requests)
            measured = st["forward_seconds"] * r["ok"] / max(1, st["images"])
            busy = f"{measured / max(r['elapsed'], 1e-9) / st['forward_workers'] * 100:11.0f}%"
        else:
            mean_batch, busy = f"{'1.0':>10}", f"{'-':>12}"
        print(f"  {kind:6s}  {clients:7d}  {r['throughput']:10.1f}  {r['p50'] * 1000:6.0f}  {r['p99'] * 1000:6.0f}"
              f"  {r['ok']:6d}  {r['errors']:6d}  {mean_batch}  {busy}  {r['others']:5.0f}%")
    print("  CPU per request (ms):  server process  client process")
    for (kind, clients), r in runs.items():
        print(f"    {kind:6s} {clients:2d} client(s)  {r['server_cpu'] * 1000:12.1f}  {r['client_cpu'] * 1000:14.2f}")
    print("  forward busy: share of the wall time the forward workers spent in forwards (pro rata for the")
    print("  measured requests). others: CPU other processes took during that measurement, % of all CPUs;")
    print("  above ~5% the ratios are rough: rerun on a quiet machine.")
    print()
    print("ratios (raw = the eager limit's reference)")
    for clients in args.clients:
        eager, ours, fp32, serial = (runs.get((k, clients)) for k in ("eager", "ours", "fp32", "serial"))
        parts = []
        if eager:
            parts.append(f"eager / raw = {eager['throughput']:.1f} / {reference:.1f} = "
                         f"{eager['throughput'] / reference:.3f}")
        if ours:
            parts.append(f"ours / raw = {ours['throughput'] / reference:.3f}")
        if ours and eager:
            parts.append(f"ours / eager = {ours['throughput'] / eager['throughput']:.2f}x")
        if fp32 and eager:
            parts.append(f"fp32 / eager = {fp32['throughput'] / eager['throughput']:.2f}x")
        if ours and serial:
            parts.append(f"ours / serial = {ours['throughput'] / serial['throughput']:.2f}x")
        if serial:
            parts.append(f"serial / raw = {serial['throughput'] / reference:.3f}")
        print(f"  {clients:2d} client(s): " + ";  ".join(parts))
    eager_one = runs.get(("eager", 1))
    for kind in ("ours", "fp32"):
        r = runs.get((kind, 1))
        if r and eager_one:
            print(f"  lone request p50, {kind} / eager = {r['p50'] * 1000:.0f} / {eager_one['p50'] * 1000:.0f} ms = "
                  f"{r['p50'] / eager_one['p50']:.2f}x")
    print("  the issue's goals: ours / eager >= 1.8x at 8 and 32 clients and lone p50 <= 0.6x; fp32 / eager >= 1.25x")
    forward_cpu = cores / reference  # core-seconds per image at the raw reference rate
    busy_runs = [r for (kind, clients), r in runs.items() if clients > 1] or list(runs.values())
    client_cpu = statistics.median(r["client_cpu"] for r in busy_runs)
    ceiling = forward_cpu / (forward_cpu + decode_one + client_cpu)
    print(f"  ceiling: the forward costs {forward_cpu * 1000:.1f} ms of CPU per image at the reference rate; decode +")
    print(f"  preprocess ({decode_one * 1000:.1f} ms) and the clients ({client_cpu * 1000:.2f} ms) share the same {cores} "
          f"CPUs, so even with")
    print(f"  perfect scheduling and free HTTP a server reaches at most {ceiling:.3f} of the reference")
    direct = {t: decode_one + f for t, f in forward_one.items()}
    fastest = min(direct, key=direct.get)
    print(f"  direct lone request: decode + preprocess {ms(decode_one)}, then batch-1 forward "
          + ", ".join(f"{ms(f)} with {t} thread(s)" for t, f in forward_one.items())
          + f"; fastest {ms(direct[fastest])} ({fastest} thread(s))")
    for kind in kinds:
        r = runs.get((kind, 1))
        if r:
            extra = ""
            if r.get("stats"):
                extra = f"; {r['stats']['lone_team_forwards']} of {r['stats']['forwards']} forwards used the lone team"
            print(f"  lone request, {kind}: p50 {ms(r['p50'])} = {r['p50'] / direct[fastest]:.2f}x the fastest direct "
                  f"(+{ms(r['p50'] - direct[fastest])}){extra}")
    print("  the earlier bar: eager >= 0.95 of the raw best under 8 and 32 clients; a lone request about as fast")
    print("  as decode + a batch-1 forward (both measured with eager)")
    print()
    print(f"  bench wall time {wall:.0f} s. Every number above was measured in this run.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-mode":
        sys.exit(clients_main(sys.argv[2:]))
    sys.exit(main())
