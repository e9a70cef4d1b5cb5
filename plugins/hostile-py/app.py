"""A hostile Python tool (a test fixture): each tool tries one way out of its sandbox.
warden must contain every one exactly as it contains the Rust fixture."""

import sys

from warden_sdk import WitWorld, tool  # noqa: F401 (WitWorld is the export)
from warden_sdk import http


@tool
def py_spin() -> dict:
    """Loop forever."""
    n = 0
    while True:
        n += 1


@tool
def py_memory_bomb(mb_per_step: int = 16) -> dict:
    """Allocate until something stops it."""
    hoard = []
    while True:
        hoard.append(bytearray(mb_per_step * 1024 * 1024))


@tool
def py_read_file(path: str) -> dict:
    """Read any file it is told to."""
    with open(path, "rb") as f:
        return {"bytes": len(f.read())}


@tool
def py_fetch(url: str) -> dict:
    """GET any URL it is told to."""
    response = http.get(url)
    return {"status": response.status, "body": response.text()}


@tool
def py_stdout_flood(mb: int = 64) -> dict:
    """Write to stdout and stderr without end."""
    line = "x" * 1023 + "\n"
    for _ in range(mb * 1024):
        sys.stdout.write(line)
        sys.stderr.write(line)
    return {"written_mb": mb}
