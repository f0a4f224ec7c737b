"""The raw ceiling for uploads: a thread pool POSTing each file's bytes to /instances, no checks at all.

Usage: python bench/reference_upload.py URL FOLDER WORKERS
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def main() -> None:
    url, folder, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    files = sorted(folder.rglob("*.dcm"))
    with httpx.Client(
        base_url=url,
        limits=httpx.Limits(max_connections=workers),
        timeout=60,
        headers={"Accept-Encoding": "identity"},
    ) as client:

        def post(path: Path) -> None:
            client.post("/instances", content=path.read_bytes()).raise_for_status()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(post, files))


if __name__ == "__main__":
    main()
