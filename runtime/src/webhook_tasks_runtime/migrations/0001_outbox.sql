-- Events to publish, written in the same transaction as the state change that caused them.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         text,
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
