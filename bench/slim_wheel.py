"""Rewrite a pyarrow wheel without the parts `datasets` never loads (used by gpu_wheels.sh).

The py3.12 pyarrow 26 wheel is 52 MiB, too much for the 64 MiB a GPU-check command carries.
Dropped: Arrow Flight and S3 (their Python modules are optional imports: pyarrow.fs wraps
`_s3fs` in try/except, Flight loads only on `import pyarrow.flight`), C++ headers, Cython
sources, the test suite, and the versioned duplicates of the shared libraries (each module
links the `.so.<major>` copy, which stays). RECORD is rewritten to match.

    python bench/slim_wheel.py IN.whl OUT.whl
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile

DROP = re.compile(
    r"^pyarrow/("
    r"include/|includes/|tests/|src/|.*\.(pyx|pxd|pxi|h|hpp|cc)$"
    r"|libarrow_flight\.|libarrow_python_flight\.|_flight\.|libarrow_s3\.|_s3fs\."
    r"|_pyarrow_cpp_tests\."
    r"|lib[a-z_]+\.so$|lib[a-z_]+\.so\.\d+\.\d+\.\d+$"
    r")"
)


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim(source: str, target: str) -> tuple[int, int]:
    """Write `target` from `source` minus DROP; returns (members kept, members dropped)."""
    kept = dropped = 0
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in zin.infolist():
            if info.filename == record:
                continue
            if DROP.match(info.filename):
                dropped += 1
                continue
            data = zin.read(info)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            rows.append(f"{info.filename},sha256={_digest(data)},{len(data)}")
            kept += 1
        rows.append(f"{record},,")
        zout.writestr(record, "\n".join(rows) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    return kept, dropped


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    kept, dropped = slim(*argv)
    print(f"slimmed {argv[0]}: kept {kept} members, dropped {dropped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
