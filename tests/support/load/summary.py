"""The load/fault suite's lines in pytest's terminal summary."""

from __future__ import annotations

from collections import defaultdict


class SummaryPlugin:
    """Lines printed in pytest's terminal summary (visible in CI without ``-s``)."""

    name = "tradeflow-load-faults-summary"

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: dict[str, list[str]] = defaultdict(list)

    def add(self, section: str, line: str) -> None:
        self.sections[section].append(line)
        print(f"[{section}] {line}", flush=True)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.sections:
            return
        terminalreporter.write_sep("=", self.title)
        for section, lines in self.sections.items():
            for line in lines:
                terminalreporter.write_line(f"[{section}] {line}")
