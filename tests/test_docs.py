"""The method notes the code relies on live in docs/method-notes.md, and references to them resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".cfg", ".toml", ".txt"}
# Folders whose files users get or read; tests included so that test comments stay readable too.
SCANNED = ("nas", "docs", "tests", "benchmarks", "latency_tables", "search_spaces", "tools")
SECTION_REF = re.compile(r"docs/method-notes\.md, sections? (\d+(?:\.\d+)?)")


def _files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED:
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return [p for p in files if p.name != "test_docs.py"]


# A reference to method notes that are not docs/method-notes.md: "method.md section 3.2", "method.md A2", a
# bare "method.md" in code or data, or the developers' shared folder. Markdown links between the
# files of docs/ ("[method-notes.md](method-notes.md)") are fine.
_FOREIGN = re.compile(r"(?<!docs/)method\.md,? (?:sections?|§|A\d|REC|\d)|\.\./shared|/work/shared|DESIGN\.md")
_BARE = re.compile(r"(?<!docs/)(?<!\[)(?<!\()method\.md")


def test_no_reference_to_notes_users_do_not_have():
    bad = []
    for path in _files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _FOREIGN.search(line) or (path.suffix != ".md" and _BARE.search(line)):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "point to docs/method-notes.md (its sections) instead:\n" + "\n".join(bad)


def test_section_references_resolve():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", (ROOT / "docs" / "method-notes.md").read_text(), re.M))
    assert {"1", "3", "4.2", "5.7", "8"} <= headings  # the parser reads the headings it should
    missing = [f"{p.relative_to(ROOT)}: section {s}" for p in _files() for s in SECTION_REF.findall(p.read_text(errors="replace"))
               if s not in headings]
    assert not missing, "docs/method-notes.md has no such section:\n" + "\n".join(missing)
