"""Scraping a real /metrics endpoint over HTTP and reading samples out of the text format."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "scrape", "scrape_sync"]


class Samples:
    """Every sample of one scrape: `samples.get("name", label="value")` (0 when absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.rows = [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def get(self, name: str, **labels: str) -> float:
        found = [value for sample, have, value in self.rows if sample == name and labels.items() <= have.items()]
        assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples: add labels"
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` matching `labels`."""
        return sum(value for sample, have, value in self.rows if sample == name and labels.items() <= have.items())


def scrape_sync(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Samples(response.read().decode())


async def scrape(address: str) -> Samples:
    """From a thread: the dispatcher under test may run on this very event loop."""
    return await asyncio.to_thread(scrape_sync, address)
