"""The README is a front door that stays true: short, its headline table the generated summary's,
every link it and the docs pages make pointing at a file that exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def test_the_headline_table_is_the_generated_summarys():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- headline: (\S+), (\w+) -->\n(.*?)\n<!-- /headline -->", readme, re.S)
    assert m, "the README has no headline block"
    source, attack, table = m.group(1), m.group(2), m.group(3).strip()
    summary = (ROOT / source).read_text()
    section = summary[summary.index(f"## {attack}: mean over seeds"):]
    section = section[:section.index("\n## ", 5)] if "\n## " in section[5:] else section
    generated = "\n".join(line for line in section.splitlines()[1:] if line.strip())
    assert table == generated


def test_every_relative_link_points_at_a_file_that_exists():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing
