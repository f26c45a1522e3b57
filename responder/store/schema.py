"""The core schema of the SQLite store, and the states of messages and outbox rows.

The states are part of the store's interface (any backend uses the same names); the
SQL is SQLite's.
"""

from __future__ import annotations

from typing import Final

SCHEMA: Final = (
    # version 1
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        gateway_id INTEGER NOT NULL UNIQUE,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at TEXT,
        raw TEXT NOT NULL,
        journaled_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'received',
        reason TEXT NOT NULL DEFAULT '',
        plugin TEXT NOT NULL DEFAULT '',
        processed_at REAL
    );
    CREATE INDEX messages_by_state ON messages (state, id);
    CREATE INDEX messages_by_src ON messages (src, journaled_at);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages (id),
        recipients TEXT NOT NULL,
        text TEXT NOT NULL,
        part INTEGER NOT NULL DEFAULT 1,
        parts INTEGER NOT NULL DEFAULT 1,
        plugin TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL DEFAULT '',
        errid INTEGER,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
    CREATE INDEX outbox_by_message ON outbox (message_id);
    CREATE TABLE plugin_schema (owner TEXT PRIMARY KEY, version INTEGER NOT NULL);
    """,
    # version 2: how often processing a message began, to set aside one that never finishes
    """
    ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    """,
    # version 3: dedupe on a message's content, not its gateway id alone (the platform reuses
    # ids after a reset); the extension a reply goes out from. SQLite cannot drop a column's
    # UNIQUE, so messages is rebuilt (ids kept; foreign keys are off during migrations).
    """
    CREATE TABLE messages_v3 (
        id INTEGER PRIMARY KEY,
        gateway_id INTEGER NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at TEXT,
        raw TEXT NOT NULL,
        journaled_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'received',
        reason TEXT NOT NULL DEFAULT '',
        plugin TEXT NOT NULL DEFAULT '',
        processed_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO messages_v3 (id, gateway_id, src, dst, text, received_at, raw, journaled_at,
        state, reason, plugin, processed_at, attempts)
        SELECT id, gateway_id, src, dst, text, received_at, raw, journaled_at,
        state, reason, plugin, processed_at, attempts FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;
    CREATE INDEX messages_by_state ON messages (state, id);
    CREATE INDEX messages_by_src ON messages (src, journaled_at);
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (gateway_id, src, dst, IFNULL(received_at, ''), text);
    ALTER TABLE outbox ADD COLUMN sender TEXT NOT NULL DEFAULT '';
    """,
    # version 4: every row belongs to an account (one, "default", until several are
    # served); who decided a drop or veto, apart from its reason; the durable queues.
    """
    ALTER TABLE messages ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE messages ADD COLUMN decided_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE outbox ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    DROP INDEX messages_dedupe;
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (account, gateway_id, src, dst, IFNULL(received_at, ''), text);
    CREATE TABLE queue_items (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        account TEXT NOT NULL DEFAULT 'default',
        key TEXT,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE UNIQUE INDEX queue_items_key ON queue_items (queue, key) WHERE key IS NOT NULL;
    CREATE INDEX queue_items_due ON queue_items (queue, state, next_attempt_at);
    """,
    # version 5: the outbox is a queue ("outbox") on the durable queue. An item may answer
    # a message (message_id), keep the gateway's last answer (result, errid) and count the
    # attempts whose outcome was unknown; "uncertain" is a terminal state besides done and
    # dead. Every outbox row moves over (sending → claimed, sent → done), then the table goes.
    """
    ALTER TABLE queue_items ADD COLUMN message_id INTEGER REFERENCES messages (id);
    ALTER TABLE queue_items ADD COLUMN result TEXT NOT NULL DEFAULT '';
    ALTER TABLE queue_items ADD COLUMN errid INTEGER;
    ALTER TABLE queue_items ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX queue_items_by_message ON queue_items (message_id)
        WHERE message_id IS NOT NULL;
    INSERT INTO queue_items (queue, account, payload, state, attempts, next_attempt_at,
        last_error, created_at, finished_at, message_id, result, errid, uncertain)
        SELECT 'outbox', account, json_object(
            'recipients', json((WITH RECURSIVE split (number, rest) AS (
                    SELECT NULL, outbox.recipients || ','
                    UNION ALL SELECT substr(rest, 1, instr(rest, ',') - 1),
                        substr(rest, instr(rest, ',') + 1) FROM split WHERE rest != '')
                SELECT json_group_array(number) FROM split WHERE number != '')),
            'text', text, 'part', part, 'parts', parts, 'plugin', plugin, 'sender', sender),
        CASE state WHEN 'sending' THEN 'claimed' WHEN 'sent' THEN 'done' ELSE state END,
        attempts, next_attempt_at, last_error, created_at, sent_at, message_id, result, errid,
        uncertain FROM outbox ORDER BY id;
    DROP TABLE outbox;
    """,
    # version 6: conversations, one row per (account, number) in one: its flow and step,
    # the fields collected (a JSON object), its state ("active", "with_person", ...), when
    # it expires (NULL: never), what an outbound send attached (context) and its owner.
    """
    CREATE TABLE conversations (
        account TEXT NOT NULL DEFAULT 'default',
        number TEXT NOT NULL,
        flow TEXT NOT NULL DEFAULT '',
        step TEXT NOT NULL DEFAULT '',
        fields TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL DEFAULT 'active',
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL,
        context TEXT NOT NULL DEFAULT '{}',
        who TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (account, number)
    );
    CREATE INDEX conversations_by_expiry ON conversations (expires_at)
        WHERE expires_at IS NOT NULL;
    CREATE INDEX conversations_by_state ON conversations (account, state, updated_at);
    """,
    # version 7: sends no message asked for (the API, broadcasts): one row per send, with
    # its idempotency key (unique per account) and the fingerprint of the request it came
    # with, its state ("scheduled" until released, "queued", "cancelled") and the first
    # answer (JSON); one row per recipient with its outcome; the outbox items they became.
    """
    CREATE TABLE outbound (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL DEFAULT 'default',
        key TEXT NOT NULL DEFAULT '',
        fingerprint TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        text TEXT NOT NULL,
        sender TEXT,
        at REAL,
        flow TEXT NOT NULL DEFAULT '',
        context TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL DEFAULT 'queued',
        parts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        answer TEXT NOT NULL DEFAULT ''
    );
    CREATE UNIQUE INDEX outbound_key ON outbound (account, key) WHERE key != '';
    CREATE INDEX outbound_scheduled ON outbound (at) WHERE state = 'scheduled';
    CREATE TABLE outbound_recipients (
        outbound_id INTEGER NOT NULL REFERENCES outbound (id) ON DELETE CASCADE,
        number TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        parts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (outbound_id, number)
    ) WITHOUT ROWID;
    ALTER TABLE queue_items ADD COLUMN outbound_id INTEGER REFERENCES outbound (id);
    CREATE INDEX queue_items_by_outbound ON queue_items (outbound_id)
        WHERE outbound_id IS NOT NULL;
    """,
)
"""Core schema migrations; the database's ``user_version`` counts those applied."""

# Message states.
RECEIVED: Final = "received"  # journaled, not yet through the plugins
PROCESSED: Final = "processed"  # replies in the outbox, not all sent yet
REPLIED: Final = "replied"  # every reply sent
IGNORED: Final = "ignored"  # no reply: dropped, unanswered or vetoed (see reason)
FAILED: Final = "failed"  # a reply was given up on (see the outbox row)
# UNCERTAIN (below): every reply settled, at least one given up with an unknown outcome

# Outbox states: how the store names the states of the "outbox" queue's items (the
# durable queue's claimed is "sending", its done is "sent").
OUTBOX: Final = "outbox"
"""The name of the durable queue the outbox is (``queue_items.queue``)."""
PENDING: Final = "pending"
SENDING: Final = "sending"
SENT: Final = "sent"
DEAD: Final = "dead"
UNCERTAIN: Final = "uncertain"
"""An SMS whose outcome was unknown, given up on (``replies.on_uncertain = "give_up"``):
never sent again, it may well have gone out. Also the state of a message none of whose
replies failed for sure, but one of them is uncertain."""

# Outbound sends (``outbound.state``).
OUTBOUND_SCHEDULED: Final = "scheduled"
"""Held by the daemon until its time; its recipients are not in the outbox yet."""
OUTBOUND_QUEUED: Final = "queued"
"""Its recipients are in the outbox (or were suppressed, invalid or cancelled)."""
OUTBOUND_CANCELLED: Final = "cancelled"
