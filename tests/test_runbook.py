"""Every alert links to its own section of docs/runbook.md, and every section has an alert."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/paybridge/paybridge/blob/main/docs/runbook.md"


def alerts() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in YAML(typ="safe").load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_has_a_runbook_section_and_every_section_an_alert() -> None:
    sections = {
        github_anchor(line[3:]): line[3:].strip()
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    rules = alerts()
    assert len(rules) >= 15
    for name, rule in rules.items():
        url = rule["annotations"].get("runbook_url")
        assert url == f"{RUNBOOK_URL}#{github_anchor(name)}", name
        assert sections.get(github_anchor(name)) == name, f"no section for {name}"
    assert set(sections.values()) == set(rules)
