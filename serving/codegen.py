"""Regenerate the committed gRPC stubs from serving/musicvae.proto: `python -m serving.codegen`.

The stubs (serving/musicvae_pb2.py, musicvae_pb2_grpc.py, musicvae_pb2.pyi) are committed so that serving
needs only grpcio at run time; grpcio-tools (pinned in requirements.lock with grpcio) is needed only
here. `--check` regenerates into a temporary folder and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "serving/musicvae.proto"
OUTPUTS = ("musicvae_pb2.py", "musicvae_pb2_grpc.py", "musicvae_pb2.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc on the .proto with the repository root as include path (so imports are `serving.*`)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}", str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_root / "serving" / name for name in OUTPUTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are not what protoc makes")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            stale = [p.name for p in generate(Path(tmp)) if not filecmp.cmp(p, ROOT / "serving" / p.name, shallow=False)]
        if stale:
            print(f"stale gRPC stubs: {', '.join(stale)}; run python -m serving.codegen", file=sys.stderr)
            return 1
        return 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
