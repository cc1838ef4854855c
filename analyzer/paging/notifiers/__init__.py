"""The notify stage: one module per vendor, each turning an action on an incident into one request.

A vendor notifier has a typed config (a frozen dataclass built from the receiver's config by
``config_from``), declares what it can do (``actions``: the actions its API has;
``resend_interval_s``: re-sent while the incident fires, for APIs that forget alerts nobody
re-sends) and builds the request from the typed incident (``IncidentRecord``): a renamed field is
an ``AttributeError`` here, at the line that reads it. It keeps no state, never sleeps and never
retries: the outbox decides when to send and the retry stage when to try again. Like
Alertmanager's notifiers, every delivery says whether a retry can help (``Delivery.retry``):
network errors, 408, 429 and 5xx can; any other 4xx means the request itself is wrong.

``http.HttpNotifiers`` is the notifier factory the collector uses: each receiver's vendor
notifier, sending over one HTTP session. The pager needs only ``Notifier`` (tests give it a recording one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar, Protocol

import orjson

from analyzer.incidents.model import IncidentRecord
from analyzer.paging.model import worst_severity

if TYPE_CHECKING:
    from analyzer.paging.notifiers.http import HttpNotifiers

ACTIONS = ("trigger", "acknowledge", "resolve")


@dataclass(frozen=True)
class Page:
    """What a notifier is asked to send: an action on an incident (``analyzer.incidents``), and
    the incidents of the same run folded into its page (``analyzer.paging.grouping``)."""

    action: str
    incident: IncidentRecord
    route: str = ""
    note: str = ""  # who acknowledged/resolved, and why
    test: bool = False
    key: str = ""  # the outbox entry's id: the same for every attempt, across restarts
    folded: tuple[IncidentRecord, ...] = ()  # the other incidents of this run on this page

    @property
    def severity(self) -> str:
        """The page's: the worst of its incidents' (one page per run, at its worst)."""
        return worst_severity(self.incident, *self.folded)

    @property
    def findings(self) -> tuple[IncidentRecord, ...]:
        """Every incident this page carries, its own first."""
        return (self.incident, *self.folded)


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    ok: bool
    retry: bool = False
    retry_after_s: float | None = None
    error: str = ""


class Notifier(Protocol):
    """What the pager needs of a pager: its name, its capabilities and one call."""

    name: str
    actions: frozenset[str]  # the actions its API has; any other is 'skipped', never sent
    resend_interval_s: float | None  # re-send a firing incident this often (None: never)

    async def notify(self, page: Page) -> Delivery: ...


class NotifierFactory(Protocol):
    """Builds each receiver's notifier; ``close`` releases what they share (connections)."""

    def __call__(self, receiver) -> Notifier: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifierConfig:
    """What every vendor's config has; each adds its own keys (``PagerDutyConfig`` …)."""

    name: str
    runbook_url: str = ""
    timeout_s: float = 10.0


def config_from(config_type, receiver):
    """A vendor's typed config from a ``agentwatch.config.ReceiverConfig``: the fields it names;
    a key the receiver leaves unset (None) takes the vendor's default.

    >>> from agentwatch.config import ReceiverConfig
    >>> from analyzer.paging.notifiers.opsgenie import OpsgenieConfig
    >>> config_from(OpsgenieConfig, ReceiverConfig(name="og", type="opsgenie", api_key="k")).url
    'https://api.opsgenie.com'
    """
    given = {f.name: getattr(receiver, f.name) for f in fields(config_type)}
    return config_type(**{k: v for k, v in given.items() if v is not None})


class HttpNotifier:
    """A vendor notifier: ``request`` (pure: the tests read it without a network) and
    ``accepted`` (which answers mean "taken") are the vendor's; ``notify`` POSTs over ``http``."""

    config_type: ClassVar[type]  # the vendor's typed config (a frozen dataclass)
    actions: ClassVar[frozenset[str]] = frozenset(ACTIONS)
    resend_interval_s: float | None = None

    def __init__(self, config, http: HttpNotifiers | None = None) -> None:
        self.config = config
        self.name: str = config.name
        self._http = http

    def request(self, page: Page) -> Request:
        raise NotImplementedError

    def accepted(self, status: int, text: str) -> bool:
        return 200 <= status < 300

    async def notify(self, page: Page) -> Delivery:
        if self._http is None:
            raise RuntimeError(f"{self.name}: built without HttpNotifiers, it cannot send")
        return await self._http.post(self.request(page), self.accepted, self.config.timeout_s)


def json_request(url: str, doc, headers: dict[str, str] | None = None) -> Request:
    return Request(url, orjson.dumps(doc), {"Content-Type": "application/json", **(headers or {})})
