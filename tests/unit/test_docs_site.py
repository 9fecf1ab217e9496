"""The docs site builds with `mkdocs build --strict`: every page in the nav, every link and anchor found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_docs_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"`make docs` fails:\n{result.stderr[-4000:]}"
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    home = (tmp_path / "site" / "index.html").read_text()
    assert 'href="security/"' in home  # README's link to docs/security.md, made a link between pages
