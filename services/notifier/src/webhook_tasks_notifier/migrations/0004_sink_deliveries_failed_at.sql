-- Deliveries given up on are pruned once older than the retention, oldest first, in
-- batches: this index keeps each batch a short range scan however many are kept.
CREATE INDEX sink_deliveries_failed_at_idx ON sink_deliveries (failed_at)
    WHERE failed_at IS NOT NULL;
