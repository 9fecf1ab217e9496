"""Tables of text for a terminal or a Markdown file: the one way gptray lays out rows."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence], align: str = "", markdown: bool = False) -> str:
    """`rows` under `header`, one line each (no final newline). `align` gives each column "l" (the
    default) or "r". Text: columns two spaces apart, each as wide as its widest cell. Markdown: a
    pipe table whose separator row carries the same alignment."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    align = align.ljust(len(header), "l")
    if markdown:
        rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join([lines[0], rule, *lines[1:]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()
                     for row in cells)
