"""``python -m app.embedded.clickhouse --host 127.0.0.1 --port 8123 --data-dir DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.exceptions import RearviewError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.embedded.clickhouse",
        description="Serve chdb (embedded ClickHouse) over the ClickHouse HTTP interface.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address [127.0.0.1]")
    parser.add_argument("--port", type=int, default=8123, help="listen port [8123]")
    parser.add_argument("--data-dir", type=Path, required=True, help="chdb data directory")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)

    from app.logs import configure
    from app.settings import LogSettings

    configure(LogSettings(level=args.log_level))
    from app.embedded.clickhouse.server import serve

    try:
        serve(args.host, args.port, args.data_dir)
    except RearviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
