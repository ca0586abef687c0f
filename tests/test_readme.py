"""The README is a front door that stays true: short, its headline table the generated summary's,
every link it and the docs pages make pointing at a file that exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def test_the_readme_has_a_headline_table_quoted_from_a_generated_summary():
    from absld_core import quotes

    (block,) = [b for b in quotes.blocks("README.md") if b[0].endswith("summary.md")][:1]
    assert block[1] == "pgd20" and block[2].startswith("| method | seeds | avg | worst | nsd |")


def test_every_quoted_block_is_its_generated_source():
    """Results in the README and docs/ are quoted from the generated files (summary.md, smoothness.md,
    bench results), never typed: a block that differs from its source fails (`make quotes` rewrites)."""
    from absld_core import quotes

    assert quotes.pages() and any(quotes.blocks(p) for p in quotes.pages())
    assert not [s for p in quotes.pages() for s in quotes.stale(p)]


def test_a_changed_source_makes_its_quote_stale(tmp_path, monkeypatch):
    from absld_core import quotes

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "s.md").write_text("# t\n\n## pgd20: x\n\n| a |\n|---|\n\n## cw30\n\nz\n")
    (tmp_path / "page.md").write_text("x\n<!-- quote: figures/s.md, pgd20 -->\n| a |\n|---|\n<!-- /quote -->\n")
    monkeypatch.setattr(quotes, "ROOT", tmp_path)
    assert quotes.stale("page.md") == []
    (tmp_path / "figures" / "s.md").write_text("# t\n\n## pgd20: x\n\n| b |\n|---|\n")
    assert quotes.stale("page.md") == ["page.md: figures/s.md, pgd20"]
    assert quotes.refresh("page.md") == 1 and quotes.stale("page.md") == []
    assert "| b |" in (tmp_path / "page.md").read_text()


def test_every_relative_link_points_at_a_file_that_exists():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_no_page_names_a_path_outside_the_repository_or_a_commit_in_prose():
    """Provenance comes from the records (a run's config.json, a bench result's machine block), not
    hashes typed into prose; a path outside the clone means nothing to a reader of it."""
    bad = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"\.\./shared|/work/|(?<![\w/.-])[0-9a-f]{7,40}(?![\w/.-])", text):
            if re.fullmatch(r"\d+", m.group(0)):
                continue  # a number, not a hash
            bad.append(f"{page.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, bad
