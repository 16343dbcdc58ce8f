"""Process settings: environment variables with the ``PETITION_`` prefix, or ``.env``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(Exception):
    """One line naming the bad setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PETITION_", env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    bot_token: str | None = None
    #: Base URL of a self-hosted Bot API server (e.g. http://127.0.0.1:8081).
    telegram_api_url: str | None = None
    database_url: str = "sqlite+aiosqlite:///petitions.db"
    staff_chat_id: int | None = None
    admin_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    default_locale: Literal["zh", "en"] = "zh"
    bureau_config: Path | None = None
    #: SQLite only: FULL survives power loss; NORMAL survives a process crash.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Seconds a getUpdates long poll waits on Telegram's side.
    polling_timeout: int = Field(default=30, ge=0, le=50)
    #: Webhook mode (`petition-bot run --webhook`): the public base URL Telegram posts to,
    #: the path, where this process listens, and the secret Telegram must send back.
    webhook_url: str | None = None
    webhook_path: str = "/telegram"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(default=8080, ge=1, le=65535)
    webhook_secret: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{16,256}$")
    webhook_max_connections: int = Field(default=1, ge=1, le=100)
    #: Keys for personal data at rest (``petition-bot new-key``), newest first (comma-separated). Without
    #: any, the embedded SQLite default generates one into ``data_key_file``.
    data_keys: str | None = None
    #: Default: next to the SQLite database file (``petitions.db`` → ``petitions.db.key``).
    data_key_file: Path | None = None
    #: Erase the personal data of cases that ended this many days ago (0: never; the
    #: background tick does it, up to 100 cases a minute, and the `purge` command at once).
    retention_days: int = Field(default=0, ge=0)
    #: Keep the petition's text, the timeline's notes and rating comments when
    #: erasing (for an archive that must keep the matter's record): free text
    #: may name anyone, so by default it is erased too (``handoff.privacy``).
    retention_keep_text: bool = False
    #: Flood control: at most this many messages and presses per person in the window
    #: (a person filing quickly sends one every few seconds; scripts send far more).
    flood_limit: int = Field(default=120, ge=1)
    flood_window_seconds: int = Field(default=60, ge=1)
    #: Failed status lookups allowed per account, and per tracking number, each hour.
    status_max_failures_per_user: int = Field(default=10, ge=1)
    status_max_failures_per_number: int = Field(default=5, ge=1)
    #: Failed sends (5xx, network) of one notification before it is given up and admins are told.
    outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    #: Telegram's overall limit for this bot, messages a second, shared by replies
    #: and notifications (30 by default; higher with Telegram's paid broadcasts).
    #: Counted per process: several webhook workers share it, so divide it among them.
    telegram_messages_per_second: int = Field(default=30, ge=1)
    #: Citizens' rows kept in memory between polling batches (SQLite only; 0: none),
    #: the least recently active dropped first. A row is about a kilobyte, more with a filing in progress.
    citizen_cache_size: int = Field(default=2000, ge=0)

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        head, sep, tail = value.partition(":")
        if not (sep and head.isdigit() and len(tail) >= 20):
            raise ValueError("does not look like a bot token (digits:secret, from @BotFather)")
        return value

    @field_validator("bureau_config")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


def load_settings() -> Settings:
    """Read the settings, or raise SettingsError with one line naming the culprit."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "PETITION_" + "_".join(str(p) for p in first["loc"][:1]).upper()
        raise SettingsError(f"{name}: {first['msg']}") from None
