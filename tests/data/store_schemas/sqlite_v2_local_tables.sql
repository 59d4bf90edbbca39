-- A SQLite database as the release before versioned local tables (24302d6) left it: the main
-- store at schema version 2, and the outbox, references and judge tables each module created
-- itself (CREATE TABLE IF NOT EXISTS), with a row in most of them.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE schema_migrations ( version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL);
INSERT INTO schema_migrations VALUES(1,'records, rollups, partials, seen ids, rejected samples',1796061277.5391380786);
INSERT INTO schema_migrations VALUES(2,'feedback events',1796061277.5392212867);
CREATE TABLE records (
    id TEXT NOT NULL, ts REAL NOT NULL, received_at REAL NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL, latency_ms REAL, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, prompt TEXT, response TEXT,
    error TEXT, user_id TEXT, session_id TEXT, metadata TEXT, ood_score REAL, flags TEXT,
    PRIMARY KEY (app, id));
CREATE TABLE rollups (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (minute, app, model, series)) WITHOUT ROWID;
CREATE TABLE partials (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, count INTEGER NOT NULL,
    errors INTEGER NOT NULL, output_tokens INTEGER NOT NULL, tokens INTEGER NOT NULL,
    token_records INTEGER NOT NULL, cost REAL NOT NULL, latency_s BLOB, ttft_s BLOB,
    gen_tps BLOB, PRIMARY KEY (minute, app, model)) WITHOUT ROWID;
CREATE TABLE seen_ids (n INTEGER NOT NULL, ids BLOB NOT NULL);
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, sample BLOB NOT NULL);
CREATE TABLE feedback (
    app TEXT NOT NULL, record_id TEXT NOT NULL, key TEXT NOT NULL, user_id TEXT NOT NULL,
    score REAL NOT NULL, value TEXT, comment TEXT, ts REAL NOT NULL, received_at REAL NOT NULL,
    negative INTEGER NOT NULL, PRIMARY KEY (app, record_id, key, user_id));
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    payload TEXT NOT NULL, created_at REAL NOT NULL, next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT, done_at REAL, ordering_key TEXT NOT NULL DEFAULT '',
    UNIQUE (channel, idempotency_key)
);
INSERT INTO outbox VALUES(1,'hook','k1','{"status":"firing"}',1700000000.0,1700000000.0,0,'pending',NULL,NULL,'a');
CREATE TABLE silences (
    id TEXT PRIMARY KEY, rule TEXT, matchers TEXT NOT NULL, starts_at REAL NOT NULL,
    ends_at REAL NOT NULL, comment TEXT NOT NULL DEFAULT ''
);
INSERT INTO silences VALUES('s1','errors','{"app": "shop"}',1700000000.0,1900000000.0,'deploy');
CREATE TABLE alert_states (
    fingerprint TEXT PRIMARY KEY, rule TEXT NOT NULL, state TEXT NOT NULL
);
CREATE TABLE message_threads (
    channel TEXT NOT NULL, alert_key TEXT NOT NULL, message_id TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (channel, alert_key)
);
INSERT INTO message_threads VALUES('slack','errors:shop','1700000000.000100',1700000000.0);
CREATE TABLE detector_refs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, field TEXT NOT NULL,
    version INTEGER NOT NULL, created_at REAL NOT NULL, source TEXT NOT NULL,
    embedder TEXT NOT NULL, size INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 0,
    drift_threshold REAL, ood_threshold REAL, states BLOB NOT NULL, texts TEXT NOT NULL,
    UNIQUE (app, field, version)
);
INSERT INTO detector_refs VALUES(1,'shop','prompt',1,1700000000.0,'file','static',2,1,NULL,NULL,X'00','["a", "b"]');
CREATE TABLE detector_windows (
    app TEXT NOT NULL, field TEXT NOT NULL, ref_id INTEGER NOT NULL, saved_at REAL NOT NULL,
    embeddings BLOB NOT NULL, texts TEXT NOT NULL, PRIMARY KEY (app, field)
);
CREATE TABLE judge_verdicts (
    record_id TEXT NOT NULL, criterion TEXT NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL,
    run_id INTEGER NOT NULL, judged_at REAL NOT NULL, passed INTEGER NOT NULL,
    score REAL NOT NULL, reasoning TEXT NOT NULL, judge_model TEXT NOT NULL,
    PRIMARY KEY (record_id, criterion)
);
INSERT INTO judge_verdicts VALUES('req-0','helpfulness','shop','gpt',1,1700000030.0,1,0.9000000000000000222,'fine','judge-model');
CREATE TABLE judge_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, finished_at REAL,
    trigger TEXT NOT NULL, app TEXT, outcome TEXT NOT NULL DEFAULT 'running',
    detail TEXT NOT NULL DEFAULT '', judged INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0, agreement REAL, anchors INTEGER NOT NULL DEFAULT 0
);
INSERT INTO judge_runs VALUES(1,1700000000.0,1700000060.0,'schedule','shop','ok','',1,0,0,0,0,0.0,NULL,0);
CREATE TABLE judge_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, requested_at REAL NOT NULL, app TEXT,
    taken_at REAL, run_id INTEGER
);
CREATE TABLE judge_reference_scores (
    record_id TEXT PRIMARY KEY, app TEXT NOT NULL, model TEXT NOT NULL, scored_at REAL NOT NULL,
    string_similarity REAL NOT NULL, embedding_similarity REAL, embedder TEXT NOT NULL
);
CREATE TABLE judge_pairs (
    shadow_id TEXT PRIMARY KEY, production_id TEXT NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, shadow_model TEXT NOT NULL, run_id INTEGER NOT NULL,
    judged_at REAL NOT NULL, outcome TEXT NOT NULL, production_first TEXT NOT NULL,
    shadow_first TEXT NOT NULL, reasoning TEXT NOT NULL, judge_model TEXT NOT NULL
);
CREATE INDEX records_id ON records (id);
CREATE INDEX records_app_ts ON records (app, ts);
CREATE INDEX records_received ON records (received_at);
CREATE INDEX feedback_received ON feedback (received_at);
CREATE INDEX outbox_due ON outbox (status, next_at);
CREATE INDEX outbox_order ON outbox (channel, ordering_key, status, id);
CREATE INDEX detector_refs_active ON detector_refs (app, field, active);
CREATE INDEX judge_verdicts_at ON judge_verdicts (judged_at);
CREATE INDEX judge_runs_started ON judge_runs (started_at);
CREATE INDEX judge_reference_scores_at ON judge_reference_scores (scored_at);
CREATE INDEX judge_pairs_at ON judge_pairs (judged_at);
CREATE INDEX judge_pairs_production ON judge_pairs (production_id);
COMMIT;
