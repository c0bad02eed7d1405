-- healthd's store, version 1, in PostgreSQL: the same tables as the SQLite
-- store's. Times are microseconds since the epoch (UTC); statuses are 0 pass,
-- 1 warn, 2 fail; periods are hours or days since the epoch. Every row hangs
-- off `checks`, whose (instance, name) keeps two healthd apart.

-- One row per check and instance: its totals and state as of `rolled_seq`.
CREATE TABLE checks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance TEXT NOT NULL,
    name TEXT NOT NULL,
    keep BIGINT NOT NULL,
    next_seq BIGINT NOT NULL DEFAULT 0,
    rolled_seq BIGINT NOT NULL DEFAULT -1,
    runs_total BIGINT NOT NULL DEFAULT 0,
    failed_total BIGINT NOT NULL DEFAULT 0,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    consecutive_successes BIGINT NOT NULL DEFAULT 0,
    status BIGINT,
    status_since BIGINT,
    UNIQUE (instance, name)
);

-- Each check's last `keep` runs: a ring of slots (seq modulo keep), so a
-- run is one row written and nothing to prune.
CREATE TABLE runs (
    check_id BIGINT NOT NULL,
    slot BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    observed BIGINT NOT NULL,
    status BIGINT NOT NULL,
    value DOUBLE PRECISION,
    output TEXT,
    duration_us BIGINT NOT NULL,
    PRIMARY KEY (check_id, slot)
);

-- Roll-ups: runs per hour and per day; b0..b11 count run durations per
-- histogram bucket (1, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10 s).
CREATE TABLE hourly (
    check_id BIGINT NOT NULL,
    period BIGINT NOT NULL,
    runs BIGINT NOT NULL, failed BIGINT NOT NULL, warned BIGINT NOT NULL,
    sum_ms DOUBLE PRECISION NOT NULL, min_ms DOUBLE PRECISION NOT NULL,
    max_ms DOUBLE PRECISION NOT NULL,
    b0 BIGINT NOT NULL, b1 BIGINT NOT NULL, b2 BIGINT NOT NULL, b3 BIGINT NOT NULL,
    b4 BIGINT NOT NULL, b5 BIGINT NOT NULL, b6 BIGINT NOT NULL, b7 BIGINT NOT NULL,
    b8 BIGINT NOT NULL, b9 BIGINT NOT NULL, b10 BIGINT NOT NULL, b11 BIGINT NOT NULL,
    PRIMARY KEY (check_id, period)
);

CREATE TABLE daily (
    check_id BIGINT NOT NULL,
    period BIGINT NOT NULL,
    runs BIGINT NOT NULL, failed BIGINT NOT NULL, warned BIGINT NOT NULL,
    sum_ms DOUBLE PRECISION NOT NULL, min_ms DOUBLE PRECISION NOT NULL,
    max_ms DOUBLE PRECISION NOT NULL,
    b0 BIGINT NOT NULL, b1 BIGINT NOT NULL, b2 BIGINT NOT NULL, b3 BIGINT NOT NULL,
    b4 BIGINT NOT NULL, b5 BIGINT NOT NULL, b6 BIGINT NOT NULL, b7 BIGINT NOT NULL,
    b8 BIGINT NOT NULL, b9 BIGINT NOT NULL, b10 BIGINT NOT NULL, b11 BIGINT NOT NULL,
    PRIMARY KEY (check_id, period)
);

-- Every change of status; `ended` is set by the next one.
CREATE TABLE incidents (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_id BIGINT NOT NULL,
    from_status BIGINT,
    to_status BIGINT NOT NULL,
    started BIGINT NOT NULL,
    ended BIGINT,
    output TEXT
);
CREATE INDEX incidents_by_check ON incidents (check_id, started);
CREATE INDEX incidents_by_time ON incidents (started);
-- The open incident of a check, which the next change ends.
CREATE INDEX incidents_open ON incidents (check_id) WHERE ended IS NULL;
