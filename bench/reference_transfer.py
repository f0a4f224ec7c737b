"""The raw ceiling for transfers: a thread pool copying each instance (GET without gzip, POST), no checks.

Usage: python bench/reference_transfer.py SOURCE_URL DESTINATION_URL WORKERS
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import httpx


def main() -> None:
    source_url, destination_url, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limits = httpx.Limits(max_connections=workers)
    identity = {"Accept-Encoding": "identity"}
    source = httpx.Client(base_url=source_url, limits=limits, timeout=60, headers=identity)
    destination = httpx.Client(base_url=destination_url, limits=limits, timeout=60, headers=identity)
    with source, destination:
        instances = source.get("/instances").json()

        def copy(instance: str) -> None:
            data = source.get(f"/instances/{instance}/file").content
            destination.post("/instances", content=data).raise_for_status()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(copy, instances))


if __name__ == "__main__":
    main()
