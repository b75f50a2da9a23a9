-- The task state machine. Only the dispatcher writes these tables.
CREATE TABLE tasks (
    correlation_id        text PRIMARY KEY,
    idempotency_key       text NOT NULL UNIQUE,
    task_id               text NOT NULL,
    user_id               text NOT NULL,
    project_id            text NOT NULL,
    assistant_id          text,
    followers             text[] NOT NULL DEFAULT '{}',
    webhook_url           text NOT NULL,
    mode                  text NOT NULL CHECK (mode IN ('callback', 'sync')),
    timeout_seconds       integer NOT NULL CHECK (timeout_seconds > 0),
    status                text NOT NULL
        CHECK (status IN ('pending', 'initiated', 'completed', 'failed', 'expired')),
    status_reason         text,
    result_url            text,
    result_metadata       jsonb,
    ack_status            text,
    estimated_completion  text,
    progress              double precision,
    progress_message      text,
    -- While a dispatcher holds the lease, no other replica sends the request.
    claimed_until         timestamptz,
    deadline_at           timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    dispatched_at         timestamptz,
    finished_at           timestamptz
);
CREATE INDEX tasks_task_id_idx ON tasks (task_id, created_at);

-- One row per HTTP request sent to an external service.
CREATE TABLE dispatch_attempts (
    correlation_id  text NOT NULL REFERENCES tasks (correlation_id),
    attempt         integer NOT NULL,
    started_at      timestamptz NOT NULL,
    latency_ms      double precision NOT NULL,
    status_code     integer,
    outcome         text NOT NULL CHECK (outcome IN ('accepted', 'rejected', 'unreachable')),
    error           text,
    response_body   text,
    PRIMARY KEY (correlation_id, attempt)
);

-- Every callback and deadline the dispatcher saw, applied or not: the task's history.
CREATE TABLE task_history (
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    event_id        uuid PRIMARY KEY,
    correlation_id  text NOT NULL,
    kind            text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('applied', 'ignored')),
    detail          text,
    from_status     text,
    to_status       text,
    recorded_at     timestamptz NOT NULL
);
CREATE INDEX task_history_correlation_idx ON task_history (correlation_id, seq);
