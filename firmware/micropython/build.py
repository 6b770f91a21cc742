"""Build the relay firmware bundles: ``python -m firmware.micropython.build [TARGET...]``.

Compiles every module with mpy-cross for ESP32 (xtensawin) and RP2040 (armv6m) into
firmware/micropython/build/<target>/ with a manifest of file hashes, and prints the code size.
"""

from __future__ import annotations

import argparse

from provisioning.relay import bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=list(bundle.TARGETS))
    parser.add_argument("--out", default=str(bundle.DEFAULT_OUT))
    args = parser.parse_args(argv)
    from pathlib import Path

    for target in args.targets:
        b = bundle.build(target, Path(args.out))
        mpy = sum(f.size for f in b.files if f.path.endswith(".mpy"))
        print(
            f"{target}: {len(b.files)} files, {b.total_bytes} bytes "
            f"({mpy} bytes of .mpy) in {b.root}  [{b.mpy_cross}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
