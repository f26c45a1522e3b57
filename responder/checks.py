"""``responder check``: every problem of a configuration in one run, and warnings.

A problem makes the configuration unusable (``run`` refuses it, a reload keeps the old
one). The core sections, the plugins' loading and the plugins' sections are all checked
in one pass: a default stands in for each bad value so the next section can be read.
A warning is about a configuration that works but is probably not what was meant (a
reply the encoding cannot carry, or that will be cut; no opt-out): the core adds its
own, and each plugin adds its own through the ``responder_check`` hook.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from responder.app import App
from responder.config import Settings, read_settings
from responder.gateway import GatewayClient
from responder.hours import calendar_covers
from responder.plugin_host import PluginHost
from responder.store import Store
from responder.text import SMS_LIMIT

OPTOUT_PLUGIN: Final = "optout"
_SHOWN_CHARACTERS: Final = 5


@dataclass(frozen=True)
class CheckReport:
    problems: tuple[str, ...]
    """Each a sentence naming the file and the dotted key; any makes the check fail."""
    warnings: tuple[str, ...]
    """Each a sentence naming the file and the dotted key; never a failure."""


def check_configuration(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> CheckReport:
    """Every problem and warning of the configuration file at ``path`` (and of its
    account files, each problem naming its file)."""
    from responder.accounts import load_accounts

    accounts = load_accounts(path, environ=environ)
    if accounts.main is not None and accounts.main.accounts.include:
        problems = accounts.all_problems
        warnings: list[str] = []
        for one in accounts.accounts.values():
            report = check_settings(one, [], environ=environ)
            problems += report.problems
            warnings += report.warnings
        return CheckReport(problems=tuple(problems), warnings=tuple(warnings))
    settings, problems = read_settings(path, environ=environ)
    if settings is None:  # not TOML: nothing more can be read
        return CheckReport(problems=tuple(problems), warnings=())
    return check_settings(settings, problems, environ=environ)


def check_settings(
    settings: Settings, problems: list[str], *, environ: Mapping[str, str] | None = None
) -> CheckReport:
    """The plugins' problems and every warning of one account's settings, after the
    ``problems`` found reading them."""
    host = PluginHost(settings, environ=environ)
    configs, section_problems = host.parse_configs(settings)
    problems = [*problems, *host.problems, *section_problems]
    store = Store(":memory:")
    app = App(
        settings,
        store=store,
        gateway=GatewayClient(settings.gateway),
        plugins=host,
        configs=configs,
        dry_run=True,
    )
    try:
        warnings = [
            *(warning.text for warning in host.warnings),
            *core_warnings(app),
            *plugin_warnings(app),
        ]
    finally:
        app.close()
        store.close()
    return CheckReport(problems=tuple(problems), warnings=tuple(warnings))


def core_warnings(app: App) -> list[str]:
    """Opt-out off, a signature the gateway encoding cannot carry, and opening hours in a
    year the holiday calendar does not know."""
    settings = app.settings
    warnings = []
    if OPTOUT_PLUGIN not in app.plugins.names():
        warnings.append(
            f"{settings.source}: plugins: the optout plugin is not enabled, so nobody can "
            "unsubscribe by SMS (退订, TD) and every number keeps getting replies; enable it "
            "unless another plugin handles opt-out"
        )
    encoding = settings.gateway.encoding
    lost = unencodable(settings.replies.signature, encoding)
    if lost:
        warnings.append(f"{settings.source}: replies.signature: {_cannot_carry(lost, encoding)}")
    api = settings.api
    if api.enabled and not api.is_loopback and not api.tls_in_front:
        warnings.append(
            f"{settings.source}: api.listen: {api.listen!r} is reachable from other machines "
            "and the API speaks plain HTTP, so bearer tokens would cross the network in "
            "clear: listen on 127.0.0.1 behind a TLS proxy (nginx, see docs/api.md) and set "
            "api.tls_in_front = true"
        )
    hours = settings.hours
    year = app.now().year
    if hours.week and hours.workdays_follow_calendar and not calendar_covers(year):
        warnings.append(
            f"{settings.source}: hours.workdays_follow_calendar: the chinesecalendar package "
            f"does not know China's official holidays of {year}, so opening hours follow the "
            "plain week and [hours] overrides: update the package (pip install -U "
            "chinesecalendar), or add the holidays as [[hours.overrides]]"
        )
    return warnings


def plugin_warnings(app: App) -> list[str]:
    """What the plugins' ``responder_check`` implementations return, in call order."""
    warnings: list[str] = []
    for plugin, function in app.plugins.implementations("responder_check"):
        result = function(app=app)
        if result is None:
            continue
        if isinstance(result, str):
            result = [result]
        if not isinstance(result, Iterable) or not all(isinstance(w, str) for w in result):
            warnings.append(
                f"plugin {plugin!r}: responder_check must return a list of strings or None, "
                f"got {type(result).__name__}"
            )
            continue
        warnings.extend(result)
    return warnings


def reply_warnings(app: App, key: str, text: str) -> list[str]:
    """Warnings about a reply text written in the configuration at the dotted ``key``.

    For ``responder_check`` implementations: characters the gateway encoding cannot
    carry (sent as □), the signature written into the text (the core adds it to every
    reply), and a text longer than ``replies.max_parts`` SMS (cut with "…"). Placeholders
    such as ``{args}`` count as written.
    """
    from responder.pipeline import compose  # the pipeline imports the app: import late

    settings = app.settings
    where = f"{settings.source}: {key}"
    warnings = []
    encoding = settings.gateway.encoding
    lost = unencodable(text, encoding)
    if lost:
        warnings.append(f"{where}: {_cannot_carry(lost, encoding)}")
    signature = settings.replies.signature
    if signature and signature in text:
        warnings.append(
            f"{where}: already contains the signature {signature!r}, which is added to every "
            "reply (replies.signature): leave it out of the text"
        )
    if len(text) + len(signature) > SMS_LIMIT and compose(app, text).truncated:
        if settings.gateway.long_sms:
            limit, remedy = "one long SMS (gateway.long_sms)", "shorten it"
        else:
            limit = f"replies.max_parts = {settings.replies.max_parts} SMS"
            remedy = "shorten it or raise replies.max_parts"
        warnings.append(
            f"{where}: is {len(text)} characters, more than {limit} can carry with the "
            f"signature: it will be cut with '…'; {remedy}"
        )
    return warnings


def unencodable(text: str, encoding: str) -> list[str]:
    """The distinct characters of ``text`` that ``encoding`` cannot carry, in order."""
    try:
        text.encode(encoding)
        return []
    except UnicodeEncodeError:
        pass
    except LookupError:  # an unknown encoding is reported as a problem already
        return []
    lost = []
    for char in dict.fromkeys(text):
        try:
            char.encode(encoding)
        except UnicodeEncodeError:
            lost.append(char)
    return lost


def _cannot_carry(lost: list[str], encoding: str) -> str:
    shown = ", ".join(repr(char) for char in lost[:_SHOWN_CHARACTERS])
    more = f" and {len(lost) - _SHOWN_CHARACTERS} more" if len(lost) > _SHOWN_CHARACTERS else ""
    return (
        f"has characters the gateway encoding {encoding!r} cannot carry: {shown}{more}; "
        "they would be sent as □"
    )
