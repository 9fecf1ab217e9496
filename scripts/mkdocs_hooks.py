"""MkDocs hooks (mkdocs.yml): the repository's top-level docs join docs/ in the site (README.md as the home page,
ARCHITECTURE.md, BENCHMARKS.md), and a link between repository files becomes a link between their pages, so
every Markdown file reads the same on GitHub and on the site. A link to a file the site does not hold (a config,
a source file) keeps its text, pointing at the file in the repository when mkdocs.yml names a repo_url."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
TOP_PAGES = {"README.md": "index.md", "ARCHITECTURE.md": "ARCHITECTURE.md", "BENCHMARKS.md": "BENCHMARKS.md"}
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


def on_files(files, config):
    for repo_path, uri in TOP_PAGES.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / repo_path)))
    return files


def repo_path(src_uri: str) -> str:
    """Where a page's source lives in the repository."""
    top = {uri: path for path, uri in TOP_PAGES.items()}
    return top.get(src_uri, f"docs/{src_uri}")


def site_uri(path: str) -> str | None:
    """The page a repository file becomes, or None if it is not in the site."""
    if path in TOP_PAGES:
        return TOP_PAGES[path]
    return path.removeprefix("docs/") if path.startswith("docs/") else None


def on_page_markdown(markdown, page, config, files):
    here = posixpath.dirname(repo_path(page.file.src_uri))
    pages = {file.src_uri for file in files.documentation_pages()}

    def relink(match: re.Match) -> str:
        text, target = match.groups()
        path, _, anchor = target.partition("#")
        if not path or re.match(r"[a-z][a-z0-9+.-]*:", path):  # an anchor here, or a URL
            return match.group(0)
        linked = posixpath.normpath(posixpath.join(here, path))
        uri = site_uri(linked)
        if uri in pages:
            relative = posixpath.relpath(uri, posixpath.dirname(page.file.src_uri) or ".")
            return f"[{text}]({relative}{'#' + anchor if anchor else ''})"
        if (ROOT / linked).exists() and config.repo_url:
            return f"[{text}]({config.repo_url.rstrip('/')}/blob/main/{linked})"
        return text if (ROOT / linked).exists() else match.group(0)  # a broken link stays, for --strict to report

    return LINK.sub(relink, markdown)
