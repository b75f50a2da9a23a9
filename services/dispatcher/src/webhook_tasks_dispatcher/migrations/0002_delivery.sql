-- A task's request while it may still be sent: the exact bytes, and when to send next.
-- The row is deleted as soon as the task leaves `pending`, so webhookAuth is kept no
-- longer than a retry may need it.
CREATE TABLE dispatch_requests (
    correlation_id   text PRIMARY KEY REFERENCES tasks (correlation_id),
    webhook_url      text NOT NULL,
    mode             text NOT NULL,
    body             bytea NOT NULL,
    auth             text,
    attempts         integer NOT NULL DEFAULT 0,
    -- Due when this passes; a sender claims a row by moving it one lease ahead, so a
    -- sender that dies mid-request leaves a row that comes due again by itself.
    next_attempt_at  timestamptz NOT NULL,
    lease_seconds    double precision NOT NULL CHECK (lease_seconds > 0),
    timeout_seconds  double precision NOT NULL CHECK (timeout_seconds > 0)
);
CREATE INDEX dispatch_requests_due_idx ON dispatch_requests (next_attempt_at);

ALTER TABLE dispatch_attempts DROP CONSTRAINT dispatch_attempts_outcome_check;
ALTER TABLE dispatch_attempts ADD CONSTRAINT dispatch_attempts_outcome_check
    CHECK (outcome IN ('accepted', 'rejected', 'unreachable', 'refused'));
-- When the next request was scheduled after this one failed (NULL: none).
ALTER TABLE dispatch_attempts ADD COLUMN retry_at timestamptz;
