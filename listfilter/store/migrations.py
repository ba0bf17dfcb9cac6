"""Versioned schema migrations of the mail log store (SQLite or PostgreSQL).

Each migration has a version number, a name and the statements for each
backend. ``listfilter db upgrade`` applies the missing ones in order, each in
its own transaction together with its row in ``listfilter_migrations``, so a
migration is either wholly applied or not at all, and running the upgrade
twice is harmless. ``listfilter check`` compares the recorded version with
:data:`LATEST`.

Version 1 is the course web app's ``mail_logs`` table as its seed schema has
it (on PostgreSQL: the ``mail_log_status`` enum and a ``timestamp``
column); it is written with IF NOT EXISTS so that a database that already
holds the seed's table adopts it. Version 2 adds what listfilter records on
top: the sender's name, the full recipient list, the queue id and the body.
Version 3 adds the ``discarded`` status (loops and duplicates), the rule that
decided and the SMTP client of a refusal at RCPT time. Version 4 adds bounce
scoring (:mod:`listfilter.store.bounces`): one score per address, the bounce
records already counted, and the notices owed to list owners. Version 5
records, for each bounce record, the member and the post it refers to,
whether it counted, and why not. Version 6 adds the ``deferred`` status (a
post ``deliver`` deferred itself) and the HELO name of a refusal at RCPT time.
Version 7 adds what Postfix's log says happened after the hand-off
(:mod:`listfilter.sync.follow`): ``reinjections``, the queue ids Postfix gave
a post's reinjected copies, and ``deliveries``, each member's last outcome.
Version 8 adds membership beyond the roster and moderation: the ``held``
status, ``list_members`` (extra members, and the joined members of opt-in
lists), ``join_requests`` (confirmed joins waiting for an owner),
``held_posts`` (held posts, the message itself included, and their fate) and
``member_changes`` (every change to those: who, when, how, and the welcome
or goodbye message it owes until sync has sent it). Version 9 gives a held
post a column of its own for its poster's expiry notice, ``notified_at``.

Never edit a released migration: add a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common.events import STATUSES

#: The statuses of the seed's table (version 1); later ones come with their migration.
SEED_STATUSES = ("delivered", "bounced", "rejected", "failed")
#: The statuses as of version 3, and as of version 6.
V3_STATUSES = SEED_STATUSES + ("discarded",)
V6_STATUSES = V3_STATUSES + ("deferred",)
V8_STATUSES = V6_STATUSES + ("held",)
assert V8_STATUSES == STATUSES, "a new status word needs a migration (and then this check names its list)"

#: A member's outcome in ``deliveries`` (version 7), as Postfix's log says it: ``sent`` (the
#: next hop accepted it), ``deferred`` (Postfix will retry), ``bounced`` (refused for good: a
#: DSN went to the -bounces address), ``expired`` (still deferred when the queue lifetime ran out).
DELIVERY_STATUSES = ("sent", "deferred", "bounced", "expired")

#: Where a member kept in ``list_members`` (version 8) comes from: ``listfilter members add`` or the
#: admin page, or a confirmed join of an opt-in list (listfilter.common.snapshot.SOURCES names the rest).
MEMBER_SOURCES = ("extra", "joined")
#: A held post's fate (``held_posts.status``): waiting; approved (sync releases it); released (handed
#: back to Postfix, through the rules once more); discarded by an owner; expired (nobody decided).
HELD_STATUSES = ("held", "approved", "released", "discarded", "expired")
#: A confirmed join that waits for an owner (``join_requests.status``).
JOIN_REQUEST_STATUSES = ("pending", "admitted", "denied", "expired")

#: The table that records which migrations a database has.
TABLE = "listfilter_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgresql


def _status_list(statuses: tuple[str, ...]) -> str:
    return ", ".join(f"'{s}'" for s in statuses)


_STATUS_LIST = _status_list(SEED_STATUSES)

#: Columns of mail_logs at version 2, in order (version 3 copies them into the rebuilt SQLite table).
_V2_COLUMNS = ("id, status, list_address, sender_email, subject, recipient_count, error_message, message_id,"
               " created_at, sender_name, list_display_name, envelope_sender, recipients, queue_id, body,"
               " body_truncated, updated_at")
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS mail_logs_created_at_idx ON mail_logs (created_at, id)",
    "CREATE INDEX IF NOT EXISTS mail_logs_status_idx ON mail_logs (status, created_at)",
    "CREATE INDEX IF NOT EXISTS mail_logs_list_idx ON mail_logs (list_address, created_at)",
)
#: Columns of mail_logs at version 5 (version 6 copies them into the rebuilt SQLite table).
_V5_COLUMNS = _V2_COLUMNS + ", rule, client_address"
#: ... and at version 6 (version 8 copies them).
_V6_COLUMNS = _V5_COLUMNS + ", helo_name"


def _v8_tables(text: str, blob: str, ts: str, serial: str) -> tuple[str, ...]:
    """Version 8's new tables, in one dialect's words for text, bytes, time and a row counter."""
    return (
        f"""CREATE TABLE IF NOT EXISTS list_members (
            list_address {text} NOT NULL,
            email_key {text} NOT NULL,
            email {text} NOT NULL,
            name {text} NOT NULL DEFAULT '',
            source {text} NOT NULL CHECK (source IN ({_status_list(MEMBER_SOURCES)})),
            until {ts},
            added_by {text} NOT NULL DEFAULT '',
            added_at {ts} NOT NULL,
            PRIMARY KEY (list_address, email_key, source)
        )""",
        f"""CREATE TABLE IF NOT EXISTS join_requests (
            list_address {text} NOT NULL,
            email_key {text} NOT NULL,
            email {text} NOT NULL,
            name {text} NOT NULL DEFAULT '',
            status {text} NOT NULL CHECK (status IN ({_status_list(JOIN_REQUEST_STATUSES)})),
            requested_at {ts} NOT NULL,
            decided_by {text} NOT NULL DEFAULT '',
            decided_at {ts},
            PRIMARY KEY (list_address, email_key)
        )""",
        f"""CREATE TABLE IF NOT EXISTS held_posts (
            id {text} PRIMARY KEY,
            list_address {text} NOT NULL,
            event_id {text} NOT NULL,
            post_key {text} NOT NULL,
            message_id {text} NOT NULL DEFAULT '',
            envelope_sender {text} NOT NULL DEFAULT '',
            sender_email {text} NOT NULL DEFAULT '',
            sender_name {text} NOT NULL DEFAULT '',
            subject {text} NOT NULL DEFAULT '',
            reason {text} NOT NULL DEFAULT '',
            status {text} NOT NULL CHECK (status IN ({_status_list(HELD_STATUSES)})),
            held_at {ts} NOT NULL,
            expires_at {ts} NOT NULL,
            decided_by {text} NOT NULL DEFAULT '',
            decided_at {ts},
            released_at {ts},
            message {blob} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS held_posts_status_idx ON held_posts (status, list_address)",
        f"""CREATE TABLE IF NOT EXISTS member_changes (
            id {serial},
            at {ts} NOT NULL,
            list_address {text} NOT NULL,
            email {text} NOT NULL,
            action {text} NOT NULL,
            source {text} NOT NULL DEFAULT '',
            actor {text} NOT NULL DEFAULT '',
            via {text} NOT NULL DEFAULT '',
            detail {text} NOT NULL DEFAULT '',
            notice {text} NOT NULL DEFAULT '',
            notified_at {ts}
        )""",
        "CREATE INDEX IF NOT EXISTS member_changes_notice_idx ON member_changes (notice, notified_at)",
        "CREATE INDEX IF NOT EXISTS member_changes_list_idx ON member_changes (list_address, at)",
    )

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "mail_logs (the seed's table)",
        sqlite=(
            f"""CREATE TABLE IF NOT EXISTS mail_logs (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL CHECK (status IN ({_STATUS_LIST})),
                list_address TEXT NOT NULL,
                sender_email TEXT,
                subject TEXT,
                recipient_count INTEGER NOT NULL DEFAULT 0,
                error_message TEXT,
                message_id TEXT,
                created_at TEXT NOT NULL
            )""",
        ),
        postgresql=(
            f"""DO $$ BEGIN
                CREATE TYPE mail_log_status AS ENUM ({_STATUS_LIST});
            EXCEPTION WHEN duplicate_object THEN NULL;
            END $$""",
            # a seed database may have the type with fewer values
            *(f"ALTER TYPE mail_log_status ADD VALUE IF NOT EXISTS '{s}'" for s in V3_STATUSES),
            """CREATE TABLE IF NOT EXISTS mail_logs (
                id text PRIMARY KEY,
                status mail_log_status NOT NULL,
                list_address text NOT NULL,
                sender_email text,
                subject text,
                recipient_count integer NOT NULL DEFAULT 0,
                error_message text,
                message_id text,
                created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
            )""",
        ),
    ),
    Migration(
        2, "sender name, recipients, queue id, body; indexes",
        sqlite=(
            "ALTER TABLE mail_logs ADD COLUMN sender_name TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN list_display_name TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN envelope_sender TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN recipients TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE mail_logs ADD COLUMN queue_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN body TEXT",
            "ALTER TABLE mail_logs ADD COLUMN body_truncated INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE mail_logs ADD COLUMN updated_at TEXT",
            *_INDEXES,
        ),
        postgresql=(
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS sender_name text NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS list_display_name text NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS envelope_sender text NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS recipients jsonb NOT NULL DEFAULT '[]'::jsonb",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS queue_id text NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS body text",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS body_truncated boolean NOT NULL DEFAULT false",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS updated_at timestamp",
            *_INDEXES,
        ),
    ),
    Migration(
        3, "discarded status, the deciding rule, the SMTP client",
        # SQLite cannot change a CHECK constraint: the table is rebuilt.
        sqlite=(
            f"""CREATE TABLE mail_logs_v3 (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL CHECK (status IN ({_status_list(V3_STATUSES)})),
                list_address TEXT NOT NULL,
                sender_email TEXT,
                subject TEXT,
                recipient_count INTEGER NOT NULL DEFAULT 0,
                error_message TEXT,
                message_id TEXT,
                created_at TEXT NOT NULL,
                sender_name TEXT NOT NULL DEFAULT '',
                list_display_name TEXT NOT NULL DEFAULT '',
                envelope_sender TEXT NOT NULL DEFAULT '',
                recipients TEXT NOT NULL DEFAULT '[]',
                queue_id TEXT NOT NULL DEFAULT '',
                body TEXT,
                body_truncated INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT,
                rule TEXT NOT NULL DEFAULT '',
                client_address TEXT NOT NULL DEFAULT ''
            )""",
            f"INSERT INTO mail_logs_v3 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM mail_logs",
            "DROP TABLE mail_logs",
            "ALTER TABLE mail_logs_v3 RENAME TO mail_logs",
            *_INDEXES,
        ),
        postgresql=(
            "ALTER TYPE mail_log_status ADD VALUE IF NOT EXISTS 'discarded'",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS rule text NOT NULL DEFAULT ''",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS client_address text NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        4, "bounce scores, counted bounce records, owner notices",
        # Days are site-local dates (ISO text on SQLite); times are UTC without a zone, as in mail_logs.
        sqlite=(
            """CREATE TABLE bounce_scores (
                address TEXT PRIMARY KEY,
                score INTEGER NOT NULL DEFAULT 0,
                last_bounce TEXT,
                lists TEXT NOT NULL DEFAULT '[]',
                suppressed INTEGER NOT NULL DEFAULT 0,
                suppressed_at TEXT,
                suppressed_reason TEXT NOT NULL DEFAULT '',
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE bounce_records (
                id TEXT PRIMARY KEY,
                list_address TEXT NOT NULL,
                day TEXT NOT NULL,
                received_at TEXT NOT NULL,
                addresses TEXT NOT NULL DEFAULT '[]',
                queue_id TEXT NOT NULL DEFAULT '',
                counted_at TEXT NOT NULL
            )""",
            "CREATE INDEX bounce_records_counted_at_idx ON bounce_records (counted_at)",
            """CREATE TABLE bounce_notices (
                id INTEGER PRIMARY KEY,
                address TEXT NOT NULL,
                list_address TEXT NOT NULL,
                score INTEGER NOT NULL,
                last_bounce TEXT NOT NULL,
                lists TEXT NOT NULL DEFAULT '[]',
                status TEXT NOT NULL DEFAULT 'owed' CHECK (status IN ('owed', 'sent', 'dropped')),
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL,
                sent_at TEXT
            )""",
            "CREATE INDEX bounce_notices_status_idx ON bounce_notices (status, id)",
        ),
        postgresql=(
            """CREATE TABLE bounce_scores (
                address text PRIMARY KEY,
                score integer NOT NULL DEFAULT 0,
                last_bounce date,
                lists jsonb NOT NULL DEFAULT '[]'::jsonb,
                suppressed boolean NOT NULL DEFAULT false,
                suppressed_at timestamp,
                suppressed_reason text NOT NULL DEFAULT '',
                updated_at timestamp NOT NULL
            )""",
            """CREATE TABLE bounce_records (
                id text PRIMARY KEY,
                list_address text NOT NULL,
                day date NOT NULL,
                received_at timestamp NOT NULL,
                addresses jsonb NOT NULL DEFAULT '[]'::jsonb,
                queue_id text NOT NULL DEFAULT '',
                counted_at timestamp NOT NULL
            )""",
            "CREATE INDEX bounce_records_counted_at_idx ON bounce_records (counted_at)",
            """CREATE TABLE bounce_notices (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                address text NOT NULL,
                list_address text NOT NULL,
                score integer NOT NULL,
                last_bounce date NOT NULL,
                lists jsonb NOT NULL DEFAULT '[]'::jsonb,
                status text NOT NULL DEFAULT 'owed' CHECK (status IN ('owed', 'sent', 'dropped')),
                attempts integer NOT NULL DEFAULT 0,
                last_error text NOT NULL DEFAULT '',
                created_at timestamp NOT NULL,
                sent_at timestamp
            )""",
            "CREATE INDEX bounce_notices_status_idx ON bounce_notices (status, id)",
        ),
    ),
    Migration(
        5, "bounce records: the member, the post, whether counted and why not",
        # A bounce counts only for a post the mail log shows was delivered to the member
        # (listfilter.store.bounces.verify); every record is kept, counted or not, with its reason.
        sqlite=(
            "ALTER TABLE bounce_records ADD COLUMN member TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE bounce_records ADD COLUMN message_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE bounce_records ADD COLUMN counted INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE bounce_records ADD COLUMN reason TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX bounce_records_post_idx ON bounce_records (member, message_id)",
            "CREATE INDEX IF NOT EXISTS mail_logs_message_id_idx ON mail_logs (message_id)",
        ),
        postgresql=(
            "ALTER TABLE bounce_records ADD COLUMN IF NOT EXISTS member text NOT NULL DEFAULT ''",
            "ALTER TABLE bounce_records ADD COLUMN IF NOT EXISTS message_id text NOT NULL DEFAULT ''",
            "ALTER TABLE bounce_records ADD COLUMN IF NOT EXISTS counted boolean NOT NULL DEFAULT true",
            "ALTER TABLE bounce_records ADD COLUMN IF NOT EXISTS reason text NOT NULL DEFAULT ''",
            "CREATE INDEX IF NOT EXISTS bounce_records_post_idx ON bounce_records (member, message_id)",
            "CREATE INDEX IF NOT EXISTS mail_logs_message_id_idx ON mail_logs (message_id)",
        ),
    ),
    Migration(
        6, "deferred status, the HELO name of a refusal at RCPT time",
        # SQLite cannot change a CHECK constraint: the table is rebuilt, as in version 3.
        sqlite=(
            f"""CREATE TABLE mail_logs_v6 (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL CHECK (status IN ({_status_list(V6_STATUSES)})),
                list_address TEXT NOT NULL,
                sender_email TEXT,
                subject TEXT,
                recipient_count INTEGER NOT NULL DEFAULT 0,
                error_message TEXT,
                message_id TEXT,
                created_at TEXT NOT NULL,
                sender_name TEXT NOT NULL DEFAULT '',
                list_display_name TEXT NOT NULL DEFAULT '',
                envelope_sender TEXT NOT NULL DEFAULT '',
                recipients TEXT NOT NULL DEFAULT '[]',
                queue_id TEXT NOT NULL DEFAULT '',
                body TEXT,
                body_truncated INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT,
                rule TEXT NOT NULL DEFAULT '',
                client_address TEXT NOT NULL DEFAULT '',
                helo_name TEXT NOT NULL DEFAULT ''
            )""",
            f"INSERT INTO mail_logs_v6 ({_V5_COLUMNS}) SELECT {_V5_COLUMNS} FROM mail_logs",
            "DROP TABLE mail_logs",
            "ALTER TABLE mail_logs_v6 RENAME TO mail_logs",
            *_INDEXES,
            "CREATE INDEX IF NOT EXISTS mail_logs_message_id_idx ON mail_logs (message_id)",
        ),
        postgresql=(
            "ALTER TYPE mail_log_status ADD VALUE IF NOT EXISTS 'deferred'",
            "ALTER TABLE mail_logs ADD COLUMN IF NOT EXISTS helo_name text NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        7, "reinjected queue ids, each member's delivery outcome from Postfix's log",
        # One row per (event, member): a later log line for the same member updates it (a retry:
        # deferred, then sent), so two followers (two hosts sharing a PostgreSQL store, or one
        # log line read twice after a crash) never count a member twice. Queue ids are per host.
        sqlite=(
            """CREATE TABLE reinjections (
                host TEXT NOT NULL,
                queue_id TEXT NOT NULL,
                event_id TEXT NOT NULL,
                seen_at TEXT NOT NULL,
                removed_at TEXT,
                PRIMARY KEY (host, queue_id, event_id)
            )""",
            "CREATE INDEX reinjections_event_idx ON reinjections (event_id)",
            f"""CREATE TABLE deliveries (
                event_id TEXT NOT NULL,
                recipient TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ({_status_list(DELIVERY_STATUSES)})),
                at TEXT NOT NULL,
                first_at TEXT NOT NULL,
                host TEXT NOT NULL DEFAULT '',
                queue_id TEXT NOT NULL DEFAULT '',
                relay TEXT NOT NULL DEFAULT '',
                dsn TEXT NOT NULL DEFAULT '',
                reply TEXT NOT NULL DEFAULT '',
                delay TEXT NOT NULL DEFAULT '',
                updated_at TEXT NOT NULL,
                PRIMARY KEY (event_id, recipient)
            )""",
            "CREATE INDEX deliveries_status_idx ON deliveries (status, event_id)",
        ),
        postgresql=(
            """CREATE TABLE IF NOT EXISTS reinjections (
                host text NOT NULL,
                queue_id text NOT NULL,
                event_id text NOT NULL,
                seen_at timestamp NOT NULL,
                removed_at timestamp,
                PRIMARY KEY (host, queue_id, event_id)
            )""",
            "CREATE INDEX IF NOT EXISTS reinjections_event_idx ON reinjections (event_id)",
            f"""CREATE TABLE IF NOT EXISTS deliveries (
                event_id text NOT NULL,
                recipient text NOT NULL,
                status text NOT NULL CHECK (status IN ({_status_list(DELIVERY_STATUSES)})),
                at timestamp NOT NULL,
                first_at timestamp NOT NULL,
                host text NOT NULL DEFAULT '',
                queue_id text NOT NULL DEFAULT '',
                relay text NOT NULL DEFAULT '',
                dsn text NOT NULL DEFAULT '',
                reply text NOT NULL DEFAULT '',
                delay text NOT NULL DEFAULT '',
                updated_at timestamp NOT NULL,
                PRIMARY KEY (event_id, recipient)
            )""",
            "CREATE INDEX IF NOT EXISTS deliveries_status_idx ON deliveries (status, event_id)",
        ),
    ),
    Migration(
        8, "held status; extra and joined members, join requests, held posts, membership changes",
        sqlite=(
            f"""CREATE TABLE mail_logs_v8 (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL CHECK (status IN ({_status_list(V8_STATUSES)})),
                list_address TEXT NOT NULL,
                sender_email TEXT,
                subject TEXT,
                recipient_count INTEGER NOT NULL DEFAULT 0,
                error_message TEXT,
                message_id TEXT,
                created_at TEXT NOT NULL,
                sender_name TEXT NOT NULL DEFAULT '',
                list_display_name TEXT NOT NULL DEFAULT '',
                envelope_sender TEXT NOT NULL DEFAULT '',
                recipients TEXT NOT NULL DEFAULT '[]',
                queue_id TEXT NOT NULL DEFAULT '',
                body TEXT,
                body_truncated INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT,
                rule TEXT NOT NULL DEFAULT '',
                client_address TEXT NOT NULL DEFAULT '',
                helo_name TEXT NOT NULL DEFAULT ''
            )""",
            f"INSERT INTO mail_logs_v8 ({_V6_COLUMNS}) SELECT {_V6_COLUMNS} FROM mail_logs",
            "DROP TABLE mail_logs",
            "ALTER TABLE mail_logs_v8 RENAME TO mail_logs",
            *_INDEXES,
            "CREATE INDEX IF NOT EXISTS mail_logs_message_id_idx ON mail_logs (message_id)",
            *_v8_tables("TEXT", "BLOB", "TEXT", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        ),
        postgresql=(
            "ALTER TYPE mail_log_status ADD VALUE IF NOT EXISTS 'held'",
            *_v8_tables("text", "bytea", "timestamp", "bigserial PRIMARY KEY"),
        ),
    ),
    Migration(
        9, "held posts: when the poster's expiry notice was dealt with",
        # NULL: an expired post still owes it. Sent, or never owed (a poster the mail side may not
        # answer, RFC 3834): the time. Posts that version 8 marked so in released_at keep that.
        sqlite=(
            "ALTER TABLE held_posts ADD COLUMN notified_at TEXT",
            "UPDATE held_posts SET notified_at = released_at, released_at = NULL WHERE status = 'expired'",
        ),
        postgresql=(
            "ALTER TABLE held_posts ADD COLUMN IF NOT EXISTS notified_at timestamp",
            "UPDATE held_posts SET notified_at = released_at, released_at = NULL WHERE status = 'expired'",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), "migration versions must be 1, 2, 3, …"
