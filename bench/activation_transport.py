"""How captured activations reach remote BLD tasks: object storage or Ray's object store.

Both ways side by side in one run, on this machine: per-layer activation arrays (the capture's
``L###.{x,attn,ffn}.npy``, float32, ``--tokens`` x ``--hidden``) for ``--layers`` layers; one
Ray task per layer reads its layer and touches every byte.

- **object storage**: the driver uploads the files to an S3 server (moto's, started here; one
  PUT per file), each task fetches its layer's files with ``nas.storage.fetch`` into its own
  cache folder and memory-maps them;
- **Ray object store**: the driver ``ray.put``s each layer's arrays, each task gets the refs.

Prints the driver's send time, the tasks' read time and the total, and their ratios. Run:
``python bench/activation_transport.py [--layers 4 --tokens 8192 --hidden 576]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARRAYS = ("x", "attn", "ffn")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_from_store(location: str, names: list[str], cache: str) -> float:
    os.environ["NAS_FETCH_CACHE"] = cache
    from nas.storage import fetch

    folder = fetch(location, names)
    return float(sum(np.load(folder / n, mmap_mode="r").sum(dtype=np.float64) for n in names))


def _read_refs(*arrays) -> float:
    return float(sum(a.sum(dtype=np.float64) for a in arrays))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=576)
    args = ap.parse_args(argv)

    import logging

    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    boto3.client("s3").create_bucket(Bucket="bench")
    from nas.storage import Remote

    work = Path(tempfile.mkdtemp(prefix="nas-transport-"))
    rng = np.random.default_rng(0)
    layers = {
        layer: {
            f"L{layer:03d}.{a}.npy": rng.standard_normal((args.tokens, args.hidden), np.float32)
            for a in ARRAYS
        }
        for layer in range(args.layers)
    }
    for files in layers.values():
        for name, array in files.items():
            np.save(work / name, array)
    total_mb = sum(a.nbytes for f in layers.values() for a in f.values()) / 1e6
    ray.init(num_cpus=min(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        store_task = ray.remote(num_cpus=1)(_read_from_store)
        ref_task = ray.remote(num_cpus=1)(_read_refs)
        ray.get(ref_task.remote(np.zeros(1)))  # warm the workers for both
        results = {}

        t0 = time.perf_counter()
        remote = Remote("s3://bench/activations")
        for files in layers.values():
            for name in files:
                remote.put(work / name, name)
        sent = time.perf_counter() - t0
        t1 = time.perf_counter()
        sums = ray.get(
            [
                store_task.remote(remote.uri, list(files), str(work / f"cache{layer}"))
                for layer, files in layers.items()
            ]
        )
        results["object storage (S3, moto)"] = (sent, time.perf_counter() - t1, sums)

        t0 = time.perf_counter()
        refs = {layer: [ray.put(a) for a in files.values()] for layer, files in layers.items()}
        sent = time.perf_counter() - t0
        t1 = time.perf_counter()
        sums = ray.get([ref_task.remote(*refs[layer]) for layer in layers])
        results["Ray object store"] = (sent, time.perf_counter() - t1, sums)
    finally:
        ray.shutdown()
        server.stop()
    first = next(iter(results.values()))
    assert all(np.allclose(r[2], first[2]) for r in results.values())  # same bytes read
    print(
        f"{args.layers} layers x 3 arrays of {args.tokens} x {args.hidden} float32 = {total_mb:.0f} MB"
    )
    print("| transport | driver sends (s) | tasks read (s) | total (s) | total / Ray's |")
    print("|:--|--:|--:|--:|--:|")
    ray_total = sum(results["Ray object store"][:2])
    for name, (send, read, _) in results.items():
        print(
            f"| {name} | {send:.2f} | {read:.2f} | {send + read:.2f} | {(send + read) / ray_total:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
