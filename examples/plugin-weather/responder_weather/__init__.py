"""TQ <city>: answers with the forecast the operator configured in ``[weather]``.

An example sms-responder plugin: a configuration section, a reply, a table of its own
in the store (queries per city, written by an observer), and a status section. It uses
only the names ``responder`` exports (``responder.__all__``), as the built-ins do.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from responder import App, ConfigSection, Message, Reply, StatusSection, Table, hookimpl

SECTION = "weather"
MIGRATIONS = [
    "CREATE TABLE weather_queries (message_id INTEGER PRIMARY KEY, city TEXT NOT NULL,"
    " found INTEGER NOT NULL, at REAL NOT NULL)",
]


@dataclass(frozen=True)
class WeatherSettings:
    keyword: str = "TQ"
    forecasts: dict[str, str] = field(default_factory=dict)
    default_city: str = ""
    unknown: str = "暂无{city}的天气预报。可查询：{cities}"

    @property
    def enabled(self) -> bool:
        return bool(self.forecasts)


def parse(table: Table) -> WeatherSettings:
    keyword = table.get_str("keyword", "TQ").strip()
    if not keyword:
        table.error("keyword", 'must be a word such as "TQ", got ""')
    cities = table.get_table("forecasts")
    forecasts = {city.strip(): cities.get_str(city) for city in cities.data}
    default_city = table.get_str("default_city", "")
    if default_city and default_city not in forecasts:
        known = "、".join(forecasts) or "none configured"
        table.error(
            "default_city", f"must be a city in weather.forecasts ({known}), got {default_city!r}"
        )
    unknown = table.get_str("unknown", WeatherSettings.unknown)
    try:
        unknown.format(city="", cities="")
    except (KeyError, IndexError, ValueError) as err:
        table.error("unknown", f"may use only {{city}} and {{cities}}, got {unknown!r} ({err})")
    return WeatherSettings(
        keyword=keyword.upper(), forecasts=forecasts, default_city=default_city, unknown=unknown
    )


def asked_city(text: str, keyword: str) -> str | None:
    """The city a message asks about ("" for none), or None when it is not a weather query.

    Full-width letters count as their ASCII forms (ＴＱ is TQ), and the city may follow
    the keyword with or without a space: "TQ 北京", "tq北京", "ＴＱ　北京".
    """
    text = unicodedata.normalize("NFKC", text).strip()
    if not text.upper().startswith(keyword):
        return None
    rest = text[len(keyword) :]
    if rest and rest[0].isascii() and not rest[0].isspace():
        return None  # "TQX" is another word, not "TQ X"
    return rest.strip()


@hookimpl
def responder_config_section() -> ConfigSection:
    return ConfigSection(SECTION, parse)


@hookimpl
def responder_startup(app: App) -> None:
    if app.plugin_config(SECTION).enabled:
        app.store.migrate(SECTION, MIGRATIONS)


@hookimpl
def responder_reply(app: App, message: Message) -> Reply | None:
    settings: WeatherSettings = app.plugin_config(SECTION)
    if not settings.enabled:
        return None
    city = asked_city(message.text, settings.keyword)
    if city is None:
        return None
    city = city or settings.default_city
    forecast = settings.forecasts.get(city)
    if forecast is None:
        text = settings.unknown.format(city=city or "", cities="、".join(settings.forecasts))
        return Reply(text=text, meta=(("city", city or "-"), ("found", "no")))
    return Reply(text=f"{city}：{forecast}", meta=(("city", city), ("found", "yes")))


@hookimpl
def responder_observe(app: App, message: Message, reply: Reply | None) -> None:
    if app.dry_run or reply is None or reply.plugin != SECTION:
        return
    meta = dict(reply.meta)
    with app.store.transaction() as tx:
        tx.execute(  # keyed on the message: a message observed twice is counted once
            "INSERT INTO weather_queries (message_id, city, found, at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (message_id) DO NOTHING",
            (message.id, meta.get("city", "-"), meta.get("found") == "yes", app.time()),
        )


@hookimpl
def responder_status(app: App) -> StatusSection | None:
    settings: WeatherSettings | None = app.plugin_config(SECTION)
    if settings is None or not settings.enabled:
        return None
    midnight = app.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    rows = app.store.query(  # the table is made by startup: none yet reads as no queries
        "SELECT COUNT(*), COALESCE(SUM(NOT found), 0) FROM weather_queries WHERE at >= ?",
        (midnight,),
        missing_ok=True,
    )
    today, unknown = (rows[0][0], rows[0][1]) if rows else (0, 0)
    return StatusSection(
        title=SECTION,
        figures=(
            ("cities", len(settings.forecasts)),
            ("queries today", today),
            ("unknown cities today", unknown),
        ),
    )
