"""The docs in the repository say what the code does: the configuration reference is made
from the config models, and no page points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from backstop.orchestration.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_is_the_one_the_models_make() -> None:
    made = CliRunner().invoke(main, ["config", "reference"])
    assert made.exit_code == 0, made.output
    assert (REPO / "docs" / "configuration.md").read_text() == made.stdout, (
        "docs/configuration.md is out of date: backstop config reference > "
        "docs/configuration.md")


def test_every_top_level_key_and_section_has_a_description() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    for row in re.findall(r"^\| `[a-z_0-9]+` \|.*\|$", text, re.MULTILINE):
        assert not row.endswith("|  |"), row


def test_the_docs_point_only_into_the_repository() -> None:
    pages = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, page
        for target in re.findall(r"\]\(((?!https?:|#)[^)#]+)", text):
            assert (page.parent / target).exists(), f"{page.name}: {target}"
