-- When a task's request was recorded: a task waits for its request to be accepted at most
-- MAX_PENDING_SECONDS from then. A request already kept counts from its task's arrival; one
-- recorded by a replica of the earlier release, during a rolling upgrade, from its insert.
ALTER TABLE dispatch_requests ADD COLUMN pending_since timestamptz NOT NULL DEFAULT now();
UPDATE dispatch_requests AS r SET pending_since = t.created_at
FROM tasks AS t WHERE t.correlation_id = r.correlation_id;
