"""Routes and silences decide alone, without I/O: Alertmanager's tree walk over incident labels."""

from __future__ import annotations

import pytest

from agentwatch.config import RouteConfig
from analyzer.paging.routing import Silence, build_route, match_routes, parse_matcher, silenced_by


def tree(**root) -> object:
    return build_route(RouteConfig.model_validate(root))


def names(route, **labels) -> list[str]:
    return [r.name for r in match_routes(route, labels)]


def test_first_matching_child_wins_unless_it_continues():
    root = tree(
        receiver="slack",
        routes=[
            {"match": {"severity": "SEV1"}, "receiver": "pd", "continue": True},
            {"match": {"class": "semantic"}, "receiver": "am"},
            {"match": {"agent": "support"}, "receiver": "og"},
        ],
    )
    assert names(root, severity="SEV1", **{"class": "semantic"}) == ["pd", "am"]
    assert names(root, severity="SEV2", **{"class": "semantic"}, agent="support") == ["am"]
    assert names(root, severity="SEV2", agent="support") == ["og"]
    assert names(root, severity="SEV3") == ["default"]  # no child: the root itself


def test_children_inherit_and_nest():
    root = tree(
        receiver="slack",
        group_wait_s=5,
        routes=[
            {
                "match": {"service": ["billing", "payments"]},
                "receiver": "og",
                "repeat_interval_s": 60,
                "routes": [{"name": "billing-sev1", "match_re": {"severity": "SEV1"}}],
            }
        ],
    )
    [nested] = match_routes(root, {"service": "payments", "severity": "SEV1"})
    assert (nested.name, nested.receiver, nested.group_wait_s, nested.repeat_interval_s) == (
        "billing-sev1", "og", 5, 60,
    )  # fmt: skip
    assert names(root, service="payments", severity="SEV2") == ["og"]
    assert names(root, service="billing-eu", severity="SEV1") == ["default"]  # values are exact


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("agent=support", {"agent": "support"}, True),
        ("agent!=support", {"agent": "support"}, False),
        ("severity=~SEV[12]", {"severity": "SEV2"}, True),
        ("severity=~SEV[12]", {"severity": "SEV22"}, False),  # anchored
        ("service!~billing.*", {"service": "support"}, True),
    ],
)
def test_matchers(text, labels, expected):
    assert parse_matcher(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["agent", "colour=red", "agent=~(unclosed"])
def test_bad_matchers_say_why(text):
    with pytest.raises(ValueError, match=text.split("=")[0]):
        parse_matcher(text)


def test_a_silence_mutes_only_while_active_and_only_what_matches_all_matchers():
    silence = Silence(
        "s1", (parse_matcher("agent=support"), parse_matcher("severity=SEV3")), 100, 200
    )
    labels = {"agent": "support", "severity": "SEV3"}
    assert silenced_by([silence], labels, 150) is silence
    assert silenced_by([silence], labels, 200) is None  # expired
    assert silenced_by([silence], labels, 99) is None
    assert silenced_by([silence], {**labels, "severity": "SEV1"}, 150) is None


# --- regexes: RE2, linear in the label's length (issue 11, hole 7) --------------------------------


def test_a_catastrophic_pattern_runs_on_re2_and_still_matches_as_alertmanager_does():
    """``(a+)+b`` against 27 a's held Python's re for 7.8 s; RE2 has no backtracking to do."""
    silence = Silence("s", (parse_matcher("agent=~(a+)+b"),), 0, 10)
    [matcher] = silence.matchers
    assert type(matcher.regex).__module__ == "re2"  # not Python's backtracking re
    assert silenced_by([silence], {"agent": "a" * 27}, 5) is None
    assert silenced_by([silence], {"agent": "aaab"}, 5) is silence
    assert silenced_by([silence], {"agent": "xaaab"}, 5) is None  # anchored at both ends
    listed = tree(receiver="slack", routes=[{"match": {"agent": ["a.b", "(x)"]}, "receiver": "og"}])
    assert names(listed, agent="a.b") == names(listed, agent="(x)") == ["og"]  # literals
    assert names(listed, agent="axb") == ["default"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (r"agent=~(a)\1", "backreferences or lookaround"),
        ("agent=~(?=a)a", "backreferences or lookaround"),
        ("agent!~(?<!x)y", "backreferences or lookaround"),
        ("agent=~" + "a" * 1001, "longer than 1000 characters"),
    ],
)
def test_a_pattern_re2_cannot_run_in_linear_time_is_refused_naming_it(text, why):
    with pytest.raises(ValueError) as refused:
        parse_matcher(text)
    assert why in str(refused.value)
    assert str(refused.value).startswith(repr(text)[:60])  # names the matcher as given
