"""The raw ceiling for downloads: a thread pool GETting each instance's file (no gzip), written, no checks.

Usage: python bench/reference_download.py URL FOLDER WORKERS
Lists /instances, then N threads share one HTTP client (N connections) and write FOLDER/<id>.dcm.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def main() -> None:
    url, folder, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    folder.mkdir(parents=True, exist_ok=True)
    with httpx.Client(
        base_url=url,
        limits=httpx.Limits(max_connections=workers),
        timeout=60,
        headers={"Accept-Encoding": "identity"},
    ) as client:
        instances: list[str] = client.get("/instances").json()

        def fetch(instance: str) -> None:
            response = client.get(f"/instances/{instance}/file")
            response.raise_for_status()
            (folder / f"{instance}.dcm").write_bytes(response.content)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fetch, instances))


if __name__ == "__main__":
    main()
