-- Each new text of a comment gets the next revision, in the statement that writes the text, so
-- a receiver can tell a late, stale edit from a newer one. Comments written before start at 1.
ALTER TABLE comments ADD COLUMN revision integer NOT NULL DEFAULT 1;

-- A delivery of a comment's text names the comment and its revision: the sink keeps at most one
-- delivery of a comment in flight (until `in_flight_until`) and sends only its newest text.
-- Notifications name no comment and keep no order among themselves.
ALTER TABLE sink_deliveries
    ADD COLUMN comment_id      bigint,
    ADD COLUMN revision        integer,
    ADD COLUMN in_flight_until timestamptz;

-- Texts queued before this migration are older than any text queued after it (revision 0);
-- among themselves the later row (the greater id) is the newer text.
UPDATE sink_deliveries
SET comment_id = (convert_from(payload, 'UTF8')::jsonb ->> 'comment_id')::bigint, revision = 0
WHERE failed_at IS NULL
  AND convert_from(payload, 'UTF8')::jsonb ->> 'type' = 'chat_comment.posted';

-- The deliverer looks up a due text's pending siblings, newer or in flight, through this index.
CREATE INDEX sink_deliveries_pending_by_comment ON sink_deliveries (comment_id, revision, id)
    WHERE comment_id IS NOT NULL AND failed_at IS NULL;
