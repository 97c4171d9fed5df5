"""``python -m fuzz.reproduce TARGET FILE``: run one saved input through a target, uncaught."""

from __future__ import annotations

import sys


def main() -> None:
    from fuzz.targets import load

    name, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        data = f.read()
    target = load(name)
    try:
        target.run(data)
    except target.expected as exc:
        print(f"refused as documented: {type(exc).__name__}: {exc}")
        return
    print("accepted")


if __name__ == "__main__":
    main()
