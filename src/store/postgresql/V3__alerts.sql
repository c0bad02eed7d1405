-- healthd's store, version 3, in PostgreSQL: the notifications' outbox and the alerts'
-- state, so that a restart sends what was pending, sends nothing twice, and
-- keeps firing alerts firing. Times are microseconds since the epoch (UTC).

-- Every notification, from its creation until it is delivered or given up
-- (and a while after, so that a restart does not send it again).
CREATE TABLE outbox (
    instance TEXT NOT NULL,
    id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    body TEXT NOT NULL,
    created BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    last_error TEXT,
    delivered BIGINT,
    given_up BIGINT,
    PRIMARY KEY (instance, id)
);
CREATE INDEX outbox_due ON outbox (instance, receiver, next_attempt)
    WHERE delivered IS NULL AND given_up IS NULL;

-- Each route's alert for a check while it is pending or firing.
CREATE TABLE alerts (
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    check_name TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (instance, route, check_name)
);
