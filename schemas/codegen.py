"""Generates the Python code of schemas/analytics.proto: `python -m schemas.codegen`.

The generated modules are committed (``schemas/analytics_pb2.py``, ``analytics_pb2.pyi``,
``analytics_pb2_grpc.py``), so neither the API nor the SDK needs protoc at run time. They are
made by the grpcio-tools version pinned in pyproject.toml's test extras, whose protoc stamps
its version into them: tests/unit/test_grpc_codegen.py regenerates them into a temporary
directory and fails when the committed files differ (the .proto was edited without running
this, or grpcio-tools was bumped without regenerating).

The include root is the repository root, so the .proto is known as ``schemas/analytics.proto``
and the gRPC module imports its messages as ``from schemas import analytics_pb2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
ROOT = SCHEMA_DIR.parent
PROTO = "schemas/analytics.proto"
GENERATED = ("analytics_pb2.py", "analytics_pb2.pyi", "analytics_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under *out_root*/schemas/; returns their paths."""
    from grpc_tools import protoc  # grpcio-tools: a build tool, not a run-time dependency

    (out_root / "schemas").mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / PROTO),
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
    return [out_root / "schemas" / name for name in GENERATED]


def main() -> int:
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
