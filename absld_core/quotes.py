"""Generated text quoted in the README and docs/, kept equal to its source. A block

    <!-- quote: figures/smoke/summary.md, pgd20 -->
    ...
    <!-- /quote -->

holds the lines of the section of that file whose heading starts with "## pgd20" (without the heading);
with no section, the whole file but its title. `make quotes` rewrites every block
from its file; a test fails while any block differs (so no result in the docs is typed by hand).
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- quote: (?P<src>[^,\s]+)(?:, (?P<section>[^>]+?))? -->\n)(?P<body>(?:(?!<!-- quote:).)*?)(<!-- /quote -->)", re.S)
PAGES = ("README.md", "docs/*.md")


class QuoteError(ValueError):
    pass


def extract(source: str | Path, section: str | None = None) -> str:
    """The quoted text: the section's lines (or the file's, less its title and with its headings one level
    down, so they sit under the page's own), runs of blank lines as one, none at either end."""
    path = ROOT / source
    if not path.is_file():
        raise QuoteError(f"quoted file {source} does not exist")
    lines = path.read_text().splitlines()
    if section is None:
        body = lines[1:] if lines and lines[0].startswith("# ") else lines
        body = ["#" + line if line.startswith("##") else line for line in body]
    else:
        heads = [i for i, line in enumerate(lines) if line.startswith(f"## {section}")]
        if not heads:
            raise QuoteError(f"{source} has no section '## {section}'")
        start = heads[0] + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
        body = lines[start:end]
    out: list[str] = []
    for line in body:
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


def blocks(page: str | Path) -> list[tuple[str, str | None, str]]:
    """(source, section, quoted text) of every block in a page."""
    text = (ROOT / page).read_text()
    return [(m["src"], m["section"], m["body"].strip()) for m in BLOCK.finditer(text)]


def stale(page: str | Path) -> list[str]:
    """The blocks of a page whose text differs from their source, as 'page: source, section'."""
    out = []
    for src, section, body in blocks(page):
        if body != extract(src, section):
            out.append(f"{page}: {src}" + (f", {section}" if section else ""))
    return out


def refresh(page: str | Path) -> int:
    """Rewrite every block of a page from its source; returns how many changed."""
    path = ROOT / page
    text = path.read_text()
    changed = 0

    def sub(m):
        nonlocal changed
        new = extract(m["src"], m["section"])
        changed += new != m["body"].strip()
        return m.group(1) + (new + "\n" if new else "") + m.group(5)

    path.write_text(BLOCK.sub(sub, text))
    return changed


def pages() -> list[Path]:
    return sorted({p.relative_to(ROOT) for pattern in PAGES for p in ROOT.glob(pattern)})


if __name__ == "__main__":
    n = sum(refresh(p) for p in pages())
    print(f"{n} quoted block(s) rewritten from their sources")
