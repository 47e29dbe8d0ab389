"""BENCHMARKS.md's building blocks, shared by every bench: tables, the machine's table, the note
on other work, and sections that each run rewrites in place (one per device and bench)."""
from __future__ import annotations

import pathlib
import re
from collections.abc import Iterable

from bench.machine import Machine

# Above this share of the CPU taken by other work during a run, the report says its figures are skewed.
_BUSY_SHARE = 0.05


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"


def section_key(label: str) -> str:
    """A section's marker key: its label in lower-case words joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def other_work_note(share: float) -> list[str]:
    """A warning when work outside the run took more than a few percent of the CPU, else nothing."""
    if share <= _BUSY_SHARE:
        return []
    return [f"**Other work was running**: processes outside the benchmark used {share:.0%} of "
            "the CPU during the run, so these figures understate every server, unevenly.", ""]


def machine_section(m: Machine, other_work: float) -> list[str]:
    """The machine's table; `other_work`: the share of its CPU that work outside the run used."""
    rows = [("CPU", f"{m.cpu}, {m.cores} cores available"), ("memory", f"{m.memory_gib} GiB"),
            ("CPU used by other work during the run", f"{other_work:.1%}"),
            ("GPU", m.gpu or "none"), ("OS", m.os), ("Python", m.python),
            *((name, version) for name, version in m.packages.items()), ("tokenwire commit", m.commit)]
    return ["### Machine", "", *table(("", ""), rows), ""]


def write_section(path: pathlib.Path, key: str, markdown: str, header: str) -> None:
    """Puts `markdown` into `path` between the markers of `key`, replacing what they held; a new
    file starts with `header`."""
    begin, end = f"<!-- bench section: {key} -->", f"<!-- end of bench section: {key} -->"
    block = f"{begin}\n{markdown}\n{end}"
    text = path.read_text() if path.exists() else header
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
