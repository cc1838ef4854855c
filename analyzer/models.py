"""Model names as the detectors compare them: a stable family, and its context window if known.

Instrumentations spell one model many ways: ``gpt-4o-2024-08-06``, ``openai/gpt-4o``,
``us.anthropic.claude-3-7-sonnet-20250219-v1:0`` (Bedrock), ``claude-3-5-sonnet@20240620``
(Vertex), ``models/gemini-2.5-pro``. ``model_family`` drops the provider path, the Bedrock
region/vendor prefix, the Vertex ``@version``, a trailing date, ``-vN:M`` and ``-latest``, so a
dated snapshot and its alias share one family (and one incident fingerprint, one baseline).

``context_window`` is a small built-in table by family prefix, longest prefix first; an unknown
model has none (``0``), and a check that needs one is skipped. The table is deliberately short:
a policy may give any agent's window as the ``context_growth`` threshold ``context_window``.

>>> model_family("us.anthropic.claude-3-7-sonnet-20250219-v1:0")
'claude-3-7-sonnet'
>>> model_family("openai/gpt-4o-mini-2024-07-18"), context_window("gpt-4o-mini-2024-07-18")
('gpt-4o-mini', 128000)
>>> context_window("gpt-4.1-nano"), context_window("llama-3.1-70b")
(1047576, 0)
"""

from __future__ import annotations

import re
from functools import lru_cache

#: family prefix -> context window in tokens (input + output), as documented by the providers
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
    "gemini-2.5": 1_048_576,
}
_BY_LENGTH = sorted(CONTEXT_WINDOWS.items(), key=lambda item: -len(item[0]))

_VENDOR = re.compile(
    r"^(?:(?:us|eu|apac|global|jp|au|ca|us-gov)\.)?"
    r"(?:anthropic|openai|google|meta|amazon|mistral|cohere|ai21|deepseek|writer)\."
)
_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8})?(?:-v\d+(?::\d+)?)?(?:-latest)?$")


@lru_cache(maxsize=1024)  # bounded: at most 1024 distinct spellings kept (~200 B each)
def model_family(model: str) -> str:
    """The stable name of a model: lower case, no provider path, no snapshot date or version."""
    name = model.strip().lower().rsplit("/", 1)[-1].split("@", 1)[0]
    name = _VENDOR.sub("", name)
    return _SUFFIX.sub("", name) or name


@lru_cache(maxsize=1024)  # asked on every LLM step; the prefix scan is ~30 comparisons
def context_window(model: str) -> int:
    """The model's context window in tokens from the built-in table; 0 when unknown."""
    family = model_family(model)
    for prefix, window in _BY_LENGTH:
        if family.startswith(prefix):
            return window
    return 0
