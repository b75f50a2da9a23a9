-- Outbox rows Kafka refused for good (larger than a record may be), set aside so the rows
-- behind them are published. `id` is the row's id in outbox.
CREATE TABLE outbox_rejected (
    id          bigint      PRIMARY KEY,
    topic       text        NOT NULL,
    key         text,
    payload     bytea       NOT NULL,
    traceparent text,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
