-- The main store's tables as c1c86a9 (the last release without versioned migrations) made
-- them: records keyed by (app, id), partials, seen ids; no schema_migrations table.
CREATE TABLE IF NOT EXISTS records (
    id TEXT NOT NULL, ts REAL NOT NULL, received_at REAL NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL, latency_ms REAL, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, prompt TEXT, response TEXT,
    error TEXT, user_id TEXT, session_id TEXT, metadata TEXT, ood_score REAL, flags TEXT,
    PRIMARY KEY (app, id)
);
CREATE INDEX IF NOT EXISTS records_id ON records (id);
CREATE INDEX IF NOT EXISTS records_app_ts ON records (app, ts);
CREATE INDEX IF NOT EXISTS records_received ON records (received_at);
CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (minute, app, model, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partials (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, count INTEGER NOT NULL,
    errors INTEGER NOT NULL, output_tokens INTEGER NOT NULL, tokens INTEGER NOT NULL,
    token_records INTEGER NOT NULL, cost REAL NOT NULL, latency_s BLOB, ttft_s BLOB,
    gen_tps BLOB, PRIMARY KEY (minute, app, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_ids (n INTEGER NOT NULL, ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, sample BLOB NOT NULL
);
