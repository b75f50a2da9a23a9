-- The trace a task's dispatch belongs to, so that every attempt, retries included, is part of it.
ALTER TABLE dispatch_requests ADD COLUMN traceparent text;
