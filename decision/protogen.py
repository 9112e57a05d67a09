"""Generate the Python gRPC stubs from ``proto/`` (and check they are current).

    python -m decision.protogen           # regenerate decision/v1/*_pb2*.py
    python -m decision.protogen --check   # exit 1 if the committed stubs are stale

The proto package ``decision.v1`` maps onto the Python package ``decision.v1``, so
the generated ``from decision.v1 import decision_pb2`` import resolves inside this
package. The output depends only on the .proto files and the pinned grpcio-tools.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT  # decision/v1/... lands inside the package
GENERATED = ("decision_pb2.py", "decision_pb2.pyi", "decision_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) over every .proto file into ``out_dir``."""
    from grpc_tools import protoc

    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def stale_files() -> list[str]:
    """Names of generated files whose committed content differs from a fresh run."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            fresh = Path(tmp, "decision", "v1", name).read_bytes()
            committed = OUT_DIR / "decision" / "v1" / name
            if not committed.exists() or committed.read_bytes() != fresh:
                stale.append(str(committed.relative_to(ROOT)))
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs (run: python -m decision.protogen):", *stale, sep="\n  ")
            return 1
        print("generated stubs are current")
        return 0
    generate(OUT_DIR)
    print("generated:", ", ".join(f"decision/v1/{n}" for n in GENERATED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
