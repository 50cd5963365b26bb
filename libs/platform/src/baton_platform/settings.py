"""The one typed settings object. Every service is configured only from BATON_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from baton_platform.sql import Database


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore")

    # where things are
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server, or a cluster's nodes comma-separated; no credentials in it",
    )
    nats_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="copies JetStream keeps of each Baton stream and bucket: 1 on a single "
        "nats-server, 3 on a 3-node cluster (survives one node down)",
    )
    nats_events_persist: Literal["default", "async"] = Field(
        default="default",
        description="how nats-server stores the BATON_EVENTS stream it makes: `default`, "
        "each write on disk before its ack; `async`, acknowledged before (a killed server "
        "loses the newest, which the outbox relay publishes again from the store). Only "
        "with one replica, and fixed once the stream exists",
    )
    nats_user: str | None = Field(
        default=None,
        description="NATS user to connect as; default: the service's own "
        "(dispatcher, device-bridge, timeout-scheduler, api)",
    )
    nats_password: SecretStr | None = Field(
        default=None, description="the NATS user's password; default: from nats_credentials"
    )
    nats_credentials: Path | None = Field(
        default=None,
        description="a JSON file of NATS user -> password (what `baton dev run` and the tests "
        "write), read for the user's password when BATON_NATS_PASSWORD is not set",
    )
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT protocol to speak; 3.1.1 for brokers without v5"
    )
    nats_ca_file: Path | None = Field(
        default=None,
        description="speak TLS to NATS, checking its certificate against this CA (PEM); "
        "a `tls://` URL without it checks against the system's CAs",
    )
    mqtt_client_id: str | None = Field(
        default=None,
        description="the device-bridge's MQTT client id (default baton-device-bridge-<instance>): "
        "its account's; keep it secret where the broker cannot bind it (nats-server)",
    )
    mqtt_username: str | None = Field(
        default=None, description="this client's MQTT account (docs/security.md)"
    )
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = Field(default=False, description="connect to the MQTT broker over TLS")
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA (PEM) the broker's certificate is checked with; None: the system's",
    )
    mqtt_device_accounts: Literal["static", "mosquitto-dynsec", "nats-reload"] = Field(
        default="static",
        description="how the api issues device credentials: through Mosquitto's dynamic security, "
        "by rewriting nats-server's MQTT users and reloading it (on its host), or not at all",
    )
    mqtt_accounts_file: Path | None = Field(
        default=None, description="nats-reload: the accounts file (var/mqtt/accounts.json)"
    )
    mqtt_nats_dir: Path | None = Field(
        default=None,
        description="nats-reload: the MQTT nats-server's directory (its users file and pid)",
    )
    mqtt_admin_username: str | None = Field(
        default=None, description="the api's broker-admin account (mosquitto-dynsec)"
    )
    mqtt_admin_password: SecretStr | None = None
    data_dir: Path = Path("var")
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:port/dbname: the event store, the views "
        "and the deadlines in that PostgreSQL database; unset: SQLite files in data_dir",
    )
    catalog_path: Path = Path("deploy/catalog/demo.yaml")

    # api
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="bootstrap keys with the operator role, tenant default"
    )
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="bootstrap keys with the owner role (tenant default)"
    )
    api_tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain): the api serves HTTPS with it"
    )
    api_tls_key_file: Path | None = Field(default=None, description="its PEM private key")
    api_drain_seconds: float = Field(
        default=0.0,
        ge=0,
        description="when asked to stop, the api first answers /ready with 503 for this long "
        "while it still serves, so a balancer sends it no new connections (a rolling restart)",
    )
    api_keep_alive_seconds: int = Field(
        default=75,
        gt=0,
        description="how long the api keeps an idle HTTP connection open: longer than its "
        "clients' and balancers' own idle limits (httpx 5 s, most balancers 60 s), so it is "
        "the client that closes it, never the server under a request being sent",
    )
    # JWT bearer tokens (docs/security.md): HS256 with a shared secret, RS256/ES256 against
    # the public keys of a JWKS file. Neither set: tokens are not accepted.
    jwt_secret: SecretStr | None = None
    jwt_jwks_path: Path | None = None
    jwt_audience: str | None = Field(
        default=None, description="the `aud` every token must carry (unset: none may)"
    )
    jwt_issuer: str | None = Field(default=None, description="the `iss` every token must carry")
    jwt_tenant_claim: str = "tenant"
    jwt_role_claim: str = "role"
    max_waiting_per_tenant: int = Field(
        default=10_000,
        ge=0,
        description="commands of one tenant that may be PENDING at once (0: no cap)",
    )
    max_waiting_per_device: int = Field(
        default=100, ge=1, description="commands that may wait for one device (offline, busy)"
    )
    ephemeral_retention_days: float = Field(
        default=7.0, gt=0, description="ephemeral executions are purged after this many days"
    )
    retention_sweep_interval: float = Field(
        default=300.0, gt=0, description="seconds between two looks for expired ephemerals"
    )
    change_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="days the change feed (SSE resumes, webhooks) and the finished webhook"
        " deliveries are kept",
    )
    request_timeout: float = Field(default=5.0, gt=0, description="NATS request timeout, s")
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=100, description="attempts of a webhook delivery before it is dead"
    )
    webhook_backoff_initial: float = Field(
        default=1.0, gt=0, description="seconds before a webhook delivery's second attempt"
    )
    webhook_backoff_max: float = Field(
        default=600.0, gt=0, description="the longest wait between two attempts, seconds"
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="one attempt's time, s")
    webhook_targets: Literal["any", "public", "loopback"] = Field(
        default="any",
        description="where webhooks may point: any address; public addresses only (no "
        "loopback, private, link-local...: SSRF, docs/security.md); or loopback only (tests)",
    )
    live_keepalive: float = Field(
        default=15.0, gt=0, description="seconds between keep-alive comments of an idle SSE stream"
    )
    live_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="an SSE stream ends after this long (its client resumes with Last-Event-ID, "
        "maybe on another replica): long streams do not pin clients to one replica for ever",
    )
    rate_limit: float = Field(
        default=1000.0,
        ge=0,
        description="requests a second one API key may send on average (per api process); 0: off",
    )
    rate_burst: int = Field(default=2000, ge=1, description="requests one API key may send at once")
    device_message_rate: float = Field(
        default=50.0,
        ge=0,
        description="messages a second one device may send on average (per device-bridge "
        "process); past it they are dropped and counted (rate-limited); 0: off",
    )
    device_message_burst: int = Field(
        default=200, ge=1, description="messages one device may send at once"
    )

    # service behaviour
    instance: str = "default"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json: one JSON object a line, for a log shipper (production); text: "
        "for people (`baton dev run` and the tests' stacks set it)",
    )
    log_messages: bool = Field(
        default=False,
        description="log FastStream's `Received`/`Processed` line for every message it handles",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="export traces over OTLP/HTTP to this collector (http://host:4318); "
        "unset: tracing is off and costs nothing",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus metrics port; 0 turns it off"
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="the address metrics are served on; 0.0.0.0 where Prometheus scrapes from "
        "another machine or container",
    )
    relay_poll_interval: float = 0.5
    projection_poll_interval: float = 0.5
    scheduler_tick: float = 0.2
    deadline_max_hold: float = Field(
        default=60.0,
        gt=0,
        description=(
            "seconds a due deadline waits at most for a device-bridge that has not stored "
            "the broker's messages up to it (a bridge down or gone)"
        ),
    )
    bridge_replicas: int = Field(
        default=1,
        ge=1,
        le=16,  # MAX_BRIDGE_REPLICAS: each has its own events consumer, named in its permissions
        description=(
            "how many device-bridges share the devices (each with its own BATON_INSTANCE and "
            'data dir); more than 1 needs MQTT 5 (docs/operations.md, "Bridge replicas")'
        ),
    )
    bridge_replica: int = Field(
        default=0,
        ge=0,
        description="which of the BATON_BRIDGE_REPLICAS this bridge is: 0, 1, ... replicas - 1",
    )
    bridge_slot_accounts: Path | None = Field(
        default=None,
        description=(
            "with bridge replicas, a JSON file of one MQTT account per slot (a list of "
            "{username, password, client_id}), for a broker that binds an account to one "
            'client id: a slot keeps its account whoever runs it (docs/operations.md, "Bridge '
            'replicas"); unset, every slot uses BATON_MQTT_USERNAME and its own client id'
        ),
    )
    mqtt_redelivery_wait: float = Field(
        default=0.0,
        ge=0,
        description=(
            "seconds after the bridge resumes its MQTT session before its watermark may "
            "advance: the broker's wait before it hands out again a message the previous "
            "connection did not acknowledge (0 for Mosquitto, which resends at once; "
            "nats-server's MQTT ack_wait + 1 for nats-server)"
        ),
    )

    @model_validator(mode="after")
    def _events_persist_on_one_server(self) -> Settings:
        # nats-server refuses `async` on a replicated stream, and an `async` stream can
        # never be replicated later: refused here, at the start, in the setting's words.
        if self.nats_events_persist == "async" and self.nats_replicas > 1:
            raise ValueError(
                "BATON_NATS_EVENTS_PERSIST=async is for a single nats-server:"
                " BATON_NATS_REPLICAS must be 1"
            )
        return self

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def event_store_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    @property
    def views_path(self) -> Path:
        return self.data_dir / "views.sqlite"

    @property
    def scheduler_path(self) -> Path:
        return self.data_dir / "deadlines.sqlite"

    @property
    def webhooks_path(self) -> Path:
        return self.data_dir / "webhooks.sqlite"

    @property
    def webhooks_database(self) -> Database:
        """Webhooks and their deliveries: `webhooks.sqlite`, or the schema `webhooks`."""
        return self._database(self.webhooks_path, "webhooks")

    @property
    def postgres_url(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None

    @property
    def event_store(self) -> Database:
        """The event store's place (eventsourcing's tables, in the URL's default schema)."""
        return self._database(self.event_store_path, "public")

    @property
    def views_database(self) -> Database:
        """The views: `views.sqlite`, or the schema `views` beside the event store."""
        return self._database(self.views_path, "views")

    @property
    def scheduler_database(self) -> Database:
        """The scheduler's deadlines: `deadlines.sqlite`, or the schema `scheduler`."""
        return self._database(self.scheduler_path, "scheduler")

    @property
    def traces_database(self) -> Database:
        """Trace contexts between a submit and its events' relay, while tracing is on:
        `traces.sqlite`, or the schema `traces` (baton_dispatcher.traces)."""
        return self._database(self.data_dir / "traces.sqlite", "traces")

    def _database(self, path: Path, schema: str) -> Database:
        url = self.postgres_url
        return Database(path=path) if url is None else Database(url=url, schema=schema)
