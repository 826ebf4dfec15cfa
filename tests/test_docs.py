"""The documents in the repository stand on their own: every relative link in them leads to a
file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files_of_the_repository(document):
    text = document.read_text()
    targets = [target.split("#", 1)[0] for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]
    assert targets or document.name != "README.md", "the README links its documents"
    for target in filter(None, targets):
        path = (document.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{document.name} links {target}, outside the repository"
        assert path.exists(), f"{document.name} links {target}, which does not exist"
    assert "../shared/" not in text, f"{document.name} points at a folder outside the repository"
