"""The bundle's wheel build (databricks.yml, artifacts): a wheel whose version is unique per build.

Serverless environments install `../dist/*.whl` by file name; a redeploy with an unchanged version can leave
tasks on the previous wheel, and a stale wheel left in dist/ would be installed beside the new one. So this
empties dist/ of lakesynth wheels, then builds from a copy of the project whose version carries a local label
(`0.1.0+20261206t101500.g1a2b3c4`: UTC build time, and the git commit when there is one). Offline: no
setuptools-scm, nothing downloaded (pip wheel --no-deps --no-build-isolation uses this environment's setuptools).

    python scripts/build_wheel.py [--out dist]
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "dist", "build", ".databricks", "__pycache__", ".pytest_cache", ".ruff_cache"}


def local_version(base: str, now: datetime.datetime | None = None, commit: str | None = None) -> str:
    """`base` with a PEP 440 local label: the UTC build time, and the short commit when known."""
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dt%H%M%S")
    return f"{base}+{stamp}" + (f".g{commit}" if commit else "")


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"))
    out = Path(parser.parse_args(argv).out).resolve()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'(?m)^version = "([^"+]+)"$', pyproject)
    if not found:
        raise SystemExit(f'{ROOT / "pyproject.toml"}: no [project] version = "..." line to label')
    version = local_version(found.group(1), commit=_commit())
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("lakesynth-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="lakesynth-build-") as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(ROOT, copy, symlinks=True, ignore=lambda _d, names: [n for n in names if n in SKIP])
        (copy / "pyproject.toml").write_text(
            pyproject.replace(found.group(0), f'version = "{version}"', 1), encoding="utf-8"
        )
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
        subprocess.run(cmd, cwd=copy, check=True)
    (wheel,) = out.glob("lakesynth-*.whl")
    print(wheel)
    return wheel


if __name__ == "__main__":
    main()
