"""Run every benchmark in bench/ one after another, each in its own process; exit 1 if any failed.

Usage: python bench/run_all.py [--list] [--quick] [--only NAME] [-- OPTIONS FOR EVERY BENCHMARK]
A benchmark is a bench/*.py script whose docstring starts with "Benchmark"; the rest (common.py, the
reference_*.py programs the benchmarks time, this file) are not run. Options this script does not know,
like `--patients 40`, go to every benchmark; `--quick` is a small data set, to check that all of them run.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: seconds instead of minutes: enough to see each benchmark work end to end, too little to compare speeds
QUICK = ["--patients", "2", "--series", "1", "--instances", "10", "--pixels", "64"]


def benchmarks(folder: Path = HERE) -> list[Path]:
    """The benchmark scripts of FOLDER, by name."""
    found = []
    for path in sorted(folder.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if docstring.startswith("Benchmark") and path.resolve() != Path(__file__).resolve():
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="print the commands it would run, run nothing")
    parser.add_argument("--quick", action="store_true", help=f"a small data set: {' '.join(QUICK)}")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    args, passed = parser.parse_known_args(argv)
    passed = [arg for arg in passed if arg != "--"]
    scripts = benchmarks()
    if args.only:
        unknown = set(args.only) - {path.stem for path in scripts}
        if unknown:
            parser.error(f"no benchmark {', '.join(sorted(unknown))} (there are: {_names(scripts)})")
        scripts = [path for path in scripts if path.stem in args.only]
    # QUICK first: sizes given on the command line come later and so win (argparse keeps the last one)
    options = [*QUICK, *passed] if args.quick else passed
    commands = [[sys.executable, str(path), *options] for path in scripts]
    if args.list:
        for command in commands:
            print(" ".join(command))
        return 0
    failed = []
    for path, command in zip(scripts, commands, strict=True):
        print(f"== {path.name}: {' '.join(command[2:]) or 'default sizes'}", flush=True)
        started = time.monotonic()
        code = subprocess.run(command, check=False).returncode  # its output goes straight to ours
        print(f"== {path.name}: exit status {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(path.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(scripts)} benchmarks ran: {_names(scripts)}")
    return 0


def _names(scripts: list[Path]) -> str:
    return ", ".join(path.stem for path in scripts) or "none"


if __name__ == "__main__":
    sys.exit(main())
