"""The scenario reference in docs/ is generated from the schema; it must not drift."""
from pathlib import Path

from mfd_core.scenario import reference_markdown


def test_docs_scenarios_md_is_up_to_date() -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "scenarios.md"
    assert page.read_text().strip() == reference_markdown().strip(), (
        "docs/scenarios.md is stale: python -m mfd_core.scenario > docs/scenarios.md")
