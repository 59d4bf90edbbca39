"""The node's own tables on SQLite (schema.py's migration 3): its state beside the store.

With the store on SQLite they share its file; with the store on PostgreSQL they are in
`store.local_url`'s file, which goes through the same migrations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

# The alert outbox, silences, alert states and Slack threads (sqlite_outbox.py),
# the detectors' references and window checkpoints (references.py), the judge's runs,
# verdicts, requests, reference scores and shadow pairs (sqlite_judge.py, sqlite_evals.py).
# `IF NOT EXISTS`: releases before this migration created them unversioned, each module its
# own; `adopt_first_outbox` gives their oldest outbox the column it lacked.
SQLITE_LOCAL = (
    """CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    payload TEXT NOT NULL, created_at REAL NOT NULL, next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT, done_at REAL, ordering_key TEXT NOT NULL DEFAULT '',
    UNIQUE (channel, idempotency_key)
)""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_at)",
    "CREATE INDEX IF NOT EXISTS outbox_order ON outbox (channel, ordering_key, status, id)",
    """CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY, rule TEXT, matchers TEXT NOT NULL, starts_at REAL NOT NULL,
    ends_at REAL NOT NULL, comment TEXT NOT NULL DEFAULT ''
)""",
    """CREATE TABLE IF NOT EXISTS alert_states (
    fingerprint TEXT PRIMARY KEY, rule TEXT NOT NULL, state TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS message_threads (
    channel TEXT NOT NULL, alert_key TEXT NOT NULL, message_id TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (channel, alert_key)
)""",
    """CREATE TABLE IF NOT EXISTS detector_refs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, field TEXT NOT NULL,
    version INTEGER NOT NULL, created_at REAL NOT NULL, source TEXT NOT NULL,
    embedder TEXT NOT NULL, size INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 0,
    drift_threshold REAL, ood_threshold REAL, states BLOB NOT NULL, texts TEXT NOT NULL,
    UNIQUE (app, field, version)
)""",
    "CREATE INDEX IF NOT EXISTS detector_refs_active ON detector_refs (app, field, active)",
    """CREATE TABLE IF NOT EXISTS detector_windows (
    app TEXT NOT NULL, field TEXT NOT NULL, ref_id INTEGER NOT NULL, saved_at REAL NOT NULL,
    embeddings BLOB NOT NULL, texts TEXT NOT NULL, PRIMARY KEY (app, field)
)""",
    """CREATE TABLE IF NOT EXISTS judge_verdicts (
    record_id TEXT NOT NULL, criterion TEXT NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL,
    run_id INTEGER NOT NULL, judged_at REAL NOT NULL, passed INTEGER NOT NULL,
    score REAL NOT NULL, reasoning TEXT NOT NULL, judge_model TEXT NOT NULL,
    PRIMARY KEY (record_id, criterion)
)""",
    "CREATE INDEX IF NOT EXISTS judge_verdicts_at ON judge_verdicts (judged_at)",
    """CREATE TABLE IF NOT EXISTS judge_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, finished_at REAL,
    trigger TEXT NOT NULL, app TEXT, outcome TEXT NOT NULL DEFAULT 'running',
    detail TEXT NOT NULL DEFAULT '', judged INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0, agreement REAL, anchors INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS judge_runs_started ON judge_runs (started_at)",
    """CREATE TABLE IF NOT EXISTS judge_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, requested_at REAL NOT NULL, app TEXT,
    taken_at REAL, run_id INTEGER
)""",
    """CREATE TABLE IF NOT EXISTS judge_reference_scores (
    record_id TEXT PRIMARY KEY, app TEXT NOT NULL, model TEXT NOT NULL, scored_at REAL NOT NULL,
    string_similarity REAL NOT NULL, embedding_similarity REAL, embedder TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS judge_reference_scores_at ON judge_reference_scores (scored_at)",
    """CREATE TABLE IF NOT EXISTS judge_pairs (
    shadow_id TEXT PRIMARY KEY, production_id TEXT NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, shadow_model TEXT NOT NULL, run_id INTEGER NOT NULL,
    judged_at REAL NOT NULL, outcome TEXT NOT NULL, production_first TEXT NOT NULL,
    shadow_first TEXT NOT NULL, reasoning TEXT NOT NULL, judge_model TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS judge_pairs_at ON judge_pairs (judged_at)",
    "CREATE INDEX IF NOT EXISTS judge_pairs_production ON judge_pairs (production_id)",
)


def adopt_first_outbox(db: sqlite3.Connection) -> None:
    """The first outbox had no ordering key: add it (as the outbox then did at start) before
    migration 3 indexes it."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if columns and "ordering_key" not in columns:
        db.execute("ALTER TABLE outbox ADD COLUMN ordering_key TEXT NOT NULL DEFAULT ''")
