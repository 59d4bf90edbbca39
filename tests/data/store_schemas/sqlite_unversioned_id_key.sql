-- The main store's tables as releases before 86c0b0f made them (git show
-- 86c0b0f^:monitor/storage/sqlite.py): records keyed by id alone, no partials, no seen ids.
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, received_at REAL NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL, latency_ms REAL, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, prompt TEXT, response TEXT,
    error TEXT, user_id TEXT, session_id TEXT, metadata TEXT, ood_score REAL, flags TEXT
);
CREATE INDEX IF NOT EXISTS records_app_ts ON records (app, ts);
CREATE INDEX IF NOT EXISTS records_received ON records (received_at);
CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (minute, app, model, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, sample BLOB NOT NULL
);
