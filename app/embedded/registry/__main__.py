"""``python -m app.embedded.registry --host 127.0.0.1 --port 8081 --data-dir DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.embedded.registry.server import serve
from core.exceptions import RearviewError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.embedded.registry",
        description="Rearview's embedded schema registry (Confluent Schema Registry REST API).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--data-dir", type=Path, required=True, help="where schemas are kept")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, args.data_dir)
    except (RearviewError, OSError) as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
