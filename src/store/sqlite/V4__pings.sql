-- healthd's store, version 4: what each heartbeat's pings said, so that a
-- restart keeps its last ping, how that run ended and a start still
-- running. Times are microseconds since the epoch (UTC).

-- One row per heartbeat check and instance, replaced by each ping.
CREATE TABLE pings (
    instance TEXT NOT NULL,
    check_name TEXT NOT NULL,
    -- When the last ping that ended a run came.
    last_ping INTEGER,
    -- How that run ended: 'success', 'fail' or 'exit' (with exit_status).
    last_outcome TEXT,
    exit_status INTEGER,
    -- A start that no end has followed yet.
    last_start INTEGER,
    -- From start to end of the last run, when it pinged its start.
    last_duration_us INTEGER,
    body TEXT,
    PRIMARY KEY (instance, check_name)
);
