"""Reading Prometheus text exposition in tests: scrape once, look samples up by name and labels."""
from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample's value, by sample name and labels."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` that carry `labels` (0 when there is none)."""
        wanted = set(labels.items())
        return sum(v for (sample, have), v in self.samples.items() if sample == name and wanted <= have)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(url: str, **request: object) -> Scrape:
    response = httpx.get(url, timeout=10, **request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return Scrape(samples)
