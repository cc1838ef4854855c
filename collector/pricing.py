"""Model prices, so every LLM step carries ``CostUsd`` and cost detectors can compare sessions.

The built-in table holds public list prices in USD per million tokens (late 2025). Prices change;
override or extend them in the config file (``prices:``). A model name matches its exact entry,
else the longest entry it starts with (``gpt-4o-2024-08-06`` -> ``gpt-4o``), after dropping a
``provider/`` prefix and cloud region prefixes (``us.anthropic.``). An unknown model costs 0 and
is counted in ``/metrics`` so the gap is visible.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. Cache prices default to the input price when not given."""

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost_usd(
        self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
    ) -> float:
        """Cost of one step. ``input_tokens`` includes cached tokens (OTel GenAI semantics).

        >>> Price(2.5, 10.0, 1.25).cost_usd(1_000_000, 100_000, 200_000, 0)
        3.25
        """
        cache_read_price = (
            self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        )
        cache_write_price = (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )
        uncached = max(input_tokens - cache_read - cache_write, 0)
        total = (
            uncached * self.input_per_mtok
            + cache_read * cache_read_price
            + cache_write * cache_write_price
            + output_tokens * self.output_per_mtok
        )
        return total / 1_000_000


BUILTIN_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "gpt-4.1": Price(2.0, 8.0, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-4o": Price(2.50, 10.0, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4-turbo": Price(10.0, 30.0),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.0, 60.0, 7.50),
    "o3": Price(2.0, 8.0, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "claude-opus-4": Price(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.30, 3.75),
    "claude-3-5-sonnet": Price(3.0, 15.0, 0.30, 3.75),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08, 1.0),
    "claude-haiku-4": Price(1.0, 5.0, 0.10, 1.25),
    "gemini-2.5-pro": Price(1.25, 10.0, 0.31),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
}

_REGION_PREFIXES = ("us.", "eu.", "apac.", "global.")


class PriceTable:
    """Looks up a model's price; the answer per model name is cached (models are few)."""

    def __init__(self, overrides: dict[str, Price] | None = None) -> None:
        self._prices = {**BUILTIN_PRICES, **{k.lower(): v for k, v in (overrides or {}).items()}}
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._cache: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        """
        >>> table = PriceTable()
        >>> table.lookup("gpt-4o-mini-2024-07-18") == BUILTIN_PRICES["gpt-4o-mini"]
        True
        >>> table.lookup("us.anthropic.claude-3-5-sonnet-20240620-v1:0").output_per_mtok
        15.0
        >>> table.lookup("my-own-model") is None
        True
        """
        try:
            return self._cache[model]
        except KeyError:
            pass
        name = model.lower().rsplit("/", 1)[-1]
        for prefix in _REGION_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith("anthropic."):
            name = name[len("anthropic.") :]
        price = self._prices.get(name)
        if price is None:
            price = next((self._prices[k] for k in self._by_length if name.startswith(k)), None)
        if len(self._cache) < 10_000:  # bounded: model names come from untrusted input
            self._cache[model] = price
        return price
