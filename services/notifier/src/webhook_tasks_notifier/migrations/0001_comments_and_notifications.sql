-- Chat comments the notifier wrote on tasks, and the users it told about them.
CREATE TABLE comments (
    id                  bigserial   PRIMARY KEY,
    correlation_id      text        NOT NULL,
    task_id             text        NOT NULL,
    project_id          text        NOT NULL,
    kind                text        NOT NULL
                        CHECK (kind IN ('result', 'error', 'expired', 'progress')),
    text                text        NOT NULL,
    -- The lifecycle event the text was rendered from; a progress comment only moves forward.
    source_event_id     uuid        NOT NULL,
    source_occurred_at  timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Invariant 1: one terminal comment per task, whatever is redelivered, replayed or raced.
CREATE UNIQUE INDEX comments_one_terminal_per_task
    ON comments (correlation_id) WHERE kind <> 'progress';

-- One progress comment per task, edited in place rather than a comment per heartbeat.
CREATE UNIQUE INDEX comments_one_progress_per_task
    ON comments (correlation_id) WHERE kind = 'progress';

CREATE TABLE notifications (
    id              bigserial   PRIMARY KEY,
    correlation_id  text        NOT NULL,
    comment_id      bigint      NOT NULL REFERENCES comments (id),
    user_id         text        NOT NULL,
    kind            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notifications_one_per_user_and_task UNIQUE (correlation_id, user_id)
);

CREATE INDEX notifications_by_comment ON notifications (comment_id);
