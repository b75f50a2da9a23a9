-- The trace an event continues, published as its `traceparent` Kafka header.
ALTER TABLE outbox ADD COLUMN traceparent text;
