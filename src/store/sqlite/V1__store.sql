-- healthd's store, version 1. Times are microseconds since the epoch (UTC);
-- statuses are 0 pass, 1 warn, 2 fail; periods are hours or days since the epoch.

-- One row per check and instance: its totals and state as of `rolled_seq`.
CREATE TABLE checks (
    id INTEGER PRIMARY KEY,
    instance TEXT NOT NULL,
    name TEXT NOT NULL,
    keep INTEGER NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 0,
    rolled_seq INTEGER NOT NULL DEFAULT -1,
    runs_total INTEGER NOT NULL DEFAULT 0,
    failed_total INTEGER NOT NULL DEFAULT 0,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    consecutive_successes INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    status_since INTEGER,
    UNIQUE (instance, name)
);

-- Each check's last `keep` runs: a ring of slots (seq modulo keep), so a
-- run is one row written and nothing to prune.
CREATE TABLE runs (
    check_id INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    observed INTEGER NOT NULL,
    status INTEGER NOT NULL,
    value REAL,
    output TEXT,
    duration_us INTEGER NOT NULL,
    PRIMARY KEY (check_id, slot)
) WITHOUT ROWID;

-- Roll-ups: runs per hour and per day; b0..b11 count run durations per
-- histogram bucket (1, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10 s).
CREATE TABLE hourly (
    check_id INTEGER NOT NULL,
    period INTEGER NOT NULL,
    runs INTEGER NOT NULL, failed INTEGER NOT NULL, warned INTEGER NOT NULL,
    sum_ms REAL NOT NULL, min_ms REAL NOT NULL, max_ms REAL NOT NULL,
    b0 INTEGER NOT NULL, b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    b4 INTEGER NOT NULL, b5 INTEGER NOT NULL, b6 INTEGER NOT NULL, b7 INTEGER NOT NULL,
    b8 INTEGER NOT NULL, b9 INTEGER NOT NULL, b10 INTEGER NOT NULL, b11 INTEGER NOT NULL,
    PRIMARY KEY (check_id, period)
) WITHOUT ROWID;

CREATE TABLE daily (
    check_id INTEGER NOT NULL,
    period INTEGER NOT NULL,
    runs INTEGER NOT NULL, failed INTEGER NOT NULL, warned INTEGER NOT NULL,
    sum_ms REAL NOT NULL, min_ms REAL NOT NULL, max_ms REAL NOT NULL,
    b0 INTEGER NOT NULL, b1 INTEGER NOT NULL, b2 INTEGER NOT NULL, b3 INTEGER NOT NULL,
    b4 INTEGER NOT NULL, b5 INTEGER NOT NULL, b6 INTEGER NOT NULL, b7 INTEGER NOT NULL,
    b8 INTEGER NOT NULL, b9 INTEGER NOT NULL, b10 INTEGER NOT NULL, b11 INTEGER NOT NULL,
    PRIMARY KEY (check_id, period)
) WITHOUT ROWID;

-- Every change of status; `ended` is set by the next one.
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    check_id INTEGER NOT NULL,
    from_status INTEGER,
    to_status INTEGER NOT NULL,
    started INTEGER NOT NULL,
    ended INTEGER,
    output TEXT
);
CREATE INDEX incidents_by_check ON incidents (check_id, started);
CREATE INDEX incidents_by_time ON incidents (started);
