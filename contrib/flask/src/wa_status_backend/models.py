"""SQLAlchemy models: the reminder row in the original app's shape, and the kit's own tables.

The reminder is the application's: an app that already has a ``CRMReminder`` model hands it over
with :class:`ReminderMapping` (column names can differ); an app without one uses :class:`Reminder`,
the same shape in a table of the kit's. Either way a disconnect writes the original row::

    tenant_id=<business id>, lead_id=None, title, note, due_date=<now>, priority="high",
    type="system_whatsapp_disconnect", created_by=<owner id or None>

and everything else the kit needs lives in three tables of its own (``wa_status_*``), so the
app's table keeps its shape:

- ``wa_status_idempotency``: each Idempotency-Key, the payload it was bound to, its answer;
- ``wa_status_tenant_status``: each gateway tenant's last reported status and reason (its row
  is also the lock that serialises two calls for one tenant);
- ``wa_status_reminder_info``: for each reminder the kit made, its language, reason and key.

All times are stored as naive UTC.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Text,
    event,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "REMINDER_TYPE",
    "REMINDER_PRIORITY",
    "Base",
    "metadata",
    "Reminder",
    "IdempotencyKey",
    "TenantStatus",
    "ReminderInfo",
    "ReminderMapping",
    "create_tables",
    "sqlite_begin_immediate",
    "utcnow",
]

REMINDER_TYPE = "system_whatsapp_disconnect"
REMINDER_PRIORITY = "high"


def utcnow() -> datetime:
    """Now as naive UTC, the form every kit column stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """The kit's own declarative base; its ``metadata`` holds only ``wa_status_*`` tables."""

    metadata = MetaData()


metadata = Base.metadata


class Reminder(Base):
    """A reminder in the original ``CRMReminder`` shape, for apps that have no such table."""

    __tablename__ = "wa_status_reminders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The business (the app's tenant) the reminder belongs to: what the login callable returns.
    tenant_id: Mapped[str] = mapped_column(String(128), index=True)
    lead_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    title: Mapped[str] = mapped_column(String(255))
    note: Mapped[str] = mapped_column(Text)
    due_date: Mapped[Optional[datetime]] = mapped_column(DateTime, nullable=True)
    priority: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(64), index=True)
    created_by: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    is_completed: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_at: Mapped[Optional[datetime]] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class IdempotencyKey(Base):
    """One processed Idempotency-Key, bound to the payload it came with."""

    __tablename__ = "wa_status_idempotency"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # sha256 of the canonical payload: the same key with another payload is refused (409).
    payload_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class TenantStatus(Base):
    """A gateway tenant's last reported WhatsApp status."""

    __tablename__ = "wa_status_tenant_status"

    tenant_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    business_id: Mapped[Optional[str]] = mapped_column(String(128), nullable=True)
    status: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    changed_at: Mapped[Optional[datetime]] = mapped_column(DateTime, nullable=True)
    received_at: Mapped[Optional[datetime]] = mapped_column(DateTime, nullable=True)


class ReminderInfo(Base):
    """What the kit knows of a reminder it created and the app's row has no column for."""

    __tablename__ = "wa_status_reminder_info"

    # The reminder's primary key as text, so any key type of the app's table fits.
    reminder_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    business_id: Mapped[str] = mapped_column(String(128), index=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    lang: Mapped[str] = mapped_column(String(16))
    reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    status_changed_at: Mapped[Optional[datetime]] = mapped_column(DateTime, nullable=True)
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


_DEFAULT: Any = object()


class ReminderMapping:
    """Where the reminder's fields live in a model class (the app's ``CRMReminder`` or ours).

    Each field names a column attribute of ``model``. Completion is a column compared with
    ``open_value`` / ``completed_value``: a boolean ``is_completed`` by default, or e.g.
    ``completed="status", open_value="open", completed_value="done"``. ``lead_id``, ``due_date``,
    ``created_by``, ``completed_at`` and ``created_at`` are optional: by default each is used when
    the model has a column of that name; None leaves it out.
    """

    def __init__(
        self,
        model: Any,
        *,
        tenant_id: str = "tenant_id",
        lead_id: Any = _DEFAULT,
        title: str = "title",
        note: str = "note",
        due_date: Any = _DEFAULT,
        priority: str = "priority",
        type: str = "type",
        created_by: Any = _DEFAULT,
        completed: str = "is_completed",
        open_value: Any = False,
        completed_value: Any = True,
        completed_at: Any = _DEFAULT,
        created_at: Any = _DEFAULT,
    ) -> None:
        self.model = model
        mapper = inspect(model)
        pk = mapper.primary_key
        if len(pk) != 1:
            raise ValueError(f"{model.__name__}: the reminder model needs a single-column primary key")
        self.id_attr = mapper.get_property_by_column(pk[0]).key
        columns = {p.key for p in mapper.column_attrs}
        optional = dict(lead_id=lead_id, due_date=due_date, created_by=created_by,
                        completed_at=completed_at, created_at=created_at)
        # An optional field left at its default is used when the model has that column and
        # skipped when it has not; one named explicitly must exist.
        optional = {f: (f if f in columns else None) if v is _DEFAULT else v for f, v in optional.items()}
        fields = dict(tenant_id=tenant_id, title=title, note=note, priority=priority, type=type,
                      completed=completed, **optional)
        missing = [f"{field}={name!r}" for field, name in fields.items() if name is not None and name not in columns]
        if missing:
            raise ValueError(
                f"{model.__name__} has no column attribute for {', '.join(missing)}; "
                "name the right attribute (or None where the field is optional)"
            )
        self.fields = fields
        self.open_value = open_value
        self.completed_value = completed_value

    def column(self, field: str) -> Any:
        return getattr(self.model, self.fields[field])

    def python_type(self, field: str) -> Optional[type]:
        try:
            return self.column(field).property.columns[0].type.python_type
        except (NotImplementedError, AttributeError, IndexError):
            return None

    def coerce_business_id(self, value: Any) -> Any:
        """The business id in the type of the ``tenant_id`` column; raises ValueError."""
        if value is None or isinstance(value, bool):
            raise ValueError("no business id")
        wanted = self.python_type("tenant_id")
        if wanted is str:
            if isinstance(value, (str, int)):
                text = str(value)
                if text:
                    return text
            raise ValueError(f"business id {value!r} does not fit a text column")
        if wanted is int:
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit() and len(value) < 20:
                return int(value)
            raise ValueError(f"business id {value!r} does not fit an integer column")
        return value

    def now_for(self, field: str) -> Any:
        """Now, as the column wants it (a date column gets today's date)."""
        now = utcnow()
        return now.date() if self.python_type(field) is date else now


def create_tables(engine: Engine, *, with_reminders: bool = True) -> None:
    """Creates the kit's tables (``with_reminders=False``: not ``wa_status_reminders``, for an
    app whose own reminder table is mapped). Production apps use the Alembic migration."""
    tables = [t for t in metadata.sorted_tables if with_reminders or t.name != Reminder.__tablename__]
    metadata.create_all(engine, tables=tables)


def sqlite_begin_immediate(engine: Engine) -> Engine:
    """Makes every transaction on a SQLite engine ``BEGIN IMMEDIATE``.

    pysqlite begins transactions lazily, so two webhook calls can both read "no open reminder"
    and the second then fails to upgrade its lock. Taking the write lock at ``BEGIN`` serialises
    them instead (SQLAlchemy's documented recipe). Other databases need nothing: the kit locks the
    tenant's status row with ``SELECT ... FOR UPDATE``.
    """

    @event.listens_for(engine, "connect")
    def _no_pysqlite_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
