"""Regenerate the Python gRPC code in src/strife/v1 from protos/, or check it.

    python tools/protogen.py          # write src/strife/v1
    python tools/protogen.py --check  # exit 1 if src/strife/v1 is stale

The generated package mirrors the proto package `strife.v1`, so the import
lines protoc writes (`from strife.v1 import money_pb2`) resolve inside the
installed `strife` package without rewriting.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "src" / "strife" / "v1"
INIT_TEXT = '"""Generated gRPC API of Strife (package strife.v1). Do not edit."""\n'


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = exe if exe.exists() else shutil.which(name)
    if not found:
        sys.exit(f"protogen: {name} not found; install the dev extra: pip install -e '.[dev]'")
    return str(found)


def generate(out_root: Path) -> Path:
    """Run protoc into out_root/strife/v1 and return that folder."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protogen: protoc failed")
    package = out_root / "strife" / "v1"
    (package / "__init__.py").write_text(INIT_TEXT)
    return package


def _stale(expected: Path, actual: Path) -> list[str]:
    names = {p.name for p in expected.iterdir()} | {
        p.name for p in actual.glob("*") if p.suffix in {".py", ".pyi"}
    }
    problems = []
    for name in sorted(names):
        want, have = expected / name, actual / name
        if not have.exists():
            problems.append(f"missing: {name}")
        elif not want.exists():
            problems.append(f"not generated from protos/: {name}")
        elif not filecmp.cmp(want, have, shallow=False):
            diff = difflib.unified_diff(
                have.read_text().splitlines(), want.read_text().splitlines(), lineterm="", n=0
            )
            problems.append(f"differs: {name}\n" + "\n".join(list(diff)[:20]))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if args.check:
            problems = _stale(fresh, OUT_PACKAGE)
            if problems:
                print("generated code is out of date with protos/:", file=sys.stderr)
                print("\n".join(problems), file=sys.stderr)
                print("run: python tools/protogen.py", file=sys.stderr)
                return 1
            print("generated code matches protos/")
            return 0
        if OUT_PACKAGE.exists():
            shutil.rmtree(OUT_PACKAGE)
        shutil.copytree(fresh, OUT_PACKAGE)
        print(f"wrote {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
