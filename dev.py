#!/usr/bin/env python3
"""Bootstrap Rearview in a local virtualenv and run it: the README's two commands.

    python3 dev.py up      install into .venv, then `rearview up --demo`
    python3 dev.py test    install into .venv (with test extras), then run the whole test suite

Only the standard library is used here, so this works on a fresh machine with Python 3.11+.
Extra arguments are passed through (`python3 dev.py test -k registry`, `python3 dev.py up --port 9000`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".rearview-install"


def _install(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Rearview needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtualenv {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # Reinstall only when pyproject.toml or the requested extras changed.
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing Rearview and its dependencies (first run takes about a minute)", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    target = f".[{extras}]" if extras else "."
    subprocess.run([*pip, "install", "-e", target], check=True, cwd=ROOT)
    STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "test"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "up":
        _install("")
        args = [str(BIN / "rearview"), "up", "--demo", *rest]
    else:
        _install("test")
        args = [str(BIN / "python"), "-m", "pytest", *rest]
    os.chdir(ROOT)
    os.execv(args[0], args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
