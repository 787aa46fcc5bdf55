"""Every repository path that README.md and docs/*.md name exists, and docs/architecture.md's
table of moves is `videoqueue.lifecycle.MOVES`: a module moved or renamed, or a move added,
without its documentation fails here, not in a reader's hands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from videoqueue.lifecycle import MOVES

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A path starting at one of the repository's top-level folders, in backticks or prose
# (`worker/steps/submit.py`, "see videoqueue/recovery.py"). It ends before a placeholder
# such as `<name>` (`worker/providers/<name>.py` checks worker/providers/), a line number
# (`byteplus.py:86`) or a space.
REPO_PATH = re.compile(r"(?<![\w./-])(?:videoqueue|producer|worker|simulator|bench|tests|docs)/[\w./-]*")

# Paths a run creates rather than the repository holds.
GENERATED = {"bench/results/quick/"}


def named_paths(text: str) -> list[str]:
    """The repository paths in `text`, trailing sentence punctuation removed."""
    return [match.group(0).rstrip(".") for match in REPO_PATH.finditer(text)]


def test_the_pattern_finds_paths_in_backticks_and_prose_and_stops_at_placeholders() -> None:
    text = (
        "see `worker/steps/submit.py`, videoqueue/recovery.py. "
        "`worker/providers/<name>.py` and `byteplus.py:86`; "
        "not ./videos nor my-worker/x"
    )
    assert named_paths(text) == [
        "worker/steps/submit.py",
        "videoqueue/recovery.py",
        "worker/providers/",
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_repository_path_a_document_names_exists(document: Path) -> None:
    missing = sorted(
        {
            path
            for path in named_paths(document.read_text(encoding="utf-8"))
            if path not in GENERATED and not (ROOT / path).exists()
        }
    )
    assert missing == [], f"{document.name} names paths that are not in the repository: {missing}"


def test_the_documents_are_found() -> None:
    names = {path.name for path in DOCUMENTS}
    assert {"README.md", "architecture.md", "reliability.md", "production.md", "benchmarks.md"} <= names


def test_the_table_of_moves_in_architecture_md_is_lifecycle_moves_row_for_row() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text[text.index("| from | to | who (`MOVES`") :].split("\n\n", 1)[0]
    rows = table.splitlines()[2:]
    # The first status in backticks of the "from" and of the "to" cell of each row.
    documented = [tuple(re.findall(r"`(\w+)`", cell)[0] for cell in row.split(" | ")[:2]) for row in rows]
    assert documented == [(move.source.value, move.target.value) for move in MOVES]
