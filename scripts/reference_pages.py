#!/usr/bin/env python
"""Write docs/reference/ from the code (gptray/cli/reference.py), or with --check say which pages are stale.

    python scripts/reference_pages.py           # what `make docs-reference` runs
    python scripts/reference_pages.py --check   # exit 1 naming each page that differs from the code
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptray.cli.reference import PAGES, REGENERATE

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    args = parser.parse_args()
    stale = []
    for name, render in PAGES.items():
        path, text = ROOT / name, render()
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {name}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}: run `{REGENERATE}`", file=sys.stderr)
        return 1
    if not stale:
        print("docs/reference/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
