-- Announcements waiting for the HTTP sink, written with the comment they announce.
-- A row is deleted once the sink accepts it; `failed_at` marks one given up on.
CREATE TABLE sink_deliveries (
    id               bigserial   PRIMARY KEY,
    event_id         uuid        NOT NULL UNIQUE,
    correlation_id   text        NOT NULL,
    payload          bytea       NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    failed_at        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- The deliverer claims due rows from the front of this index.
CREATE INDEX sink_deliveries_due_idx ON sink_deliveries (next_attempt_at) WHERE failed_at IS NULL;
