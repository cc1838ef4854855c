"""Regular expressions that users write (silences, route matchers), compiled by RE2.

Python's ``re`` backtracks: the silence ``agent=~(a+)+b`` against an agent named ``"a" * 27``
held the event loop, every port, for 7.8 s (×4 per two more characters). RE2 matches in time
linear in the text whatever the pattern, the guarantee Alertmanager gets from Go's regexp (the
same syntax). What RE2 cannot run in linear time (backreferences, lookaround) it refuses to
compile, so such a pattern is refused where it is given, never at match time.

>>> compile_regex("support-.*").fullmatch("support-eu") is not None
True
>>> compile_regex(r"(a)\\1")
Traceback (most recent call last):
...
analyzer.user_regex.RegexError: not a regular expression RE2 accepts (invalid escape sequence: \\1); RE2 has no backreferences or lookaround
"""

from __future__ import annotations

import re2

#: Longest pattern a user may give (Alertmanager has no limit; ours bounds memory and match cost).
MAX_PATTERN_CHARS = 1000

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern on stderr
_OPTIONS.max_mem = 1 << 20  # compiled program size: a pattern needing more is refused


#: A literal text as a pattern that matches just it.
escape = re2.escape


class RegexError(ValueError):
    """The pattern is refused; the message says why (the caller names the key and the pattern)."""


def compile_regex(pattern: str, max_chars: int | None = MAX_PATTERN_CHARS):
    """``pattern`` compiled by RE2, or ``RegexError``. ``max_chars=None`` for patterns we build."""
    if not isinstance(pattern, str):
        raise RegexError(f"expected a text, got {type(pattern).__name__}")
    if max_chars is not None and len(pattern) > max_chars:
        raise RegexError(f"longer than {max_chars} characters ({len(pattern)})")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        hint = ""
        if "perl operator" in reason or "escape sequence" in reason:
            hint = "; RE2 has no backreferences or lookaround"
        raise RegexError(f"not a regular expression RE2 accepts ({reason}){hint}") from None
