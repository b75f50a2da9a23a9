-- An attempt the dispatcher itself failed (a bug, a value it could not store) is recorded
-- too, so the attempt limit ends a task that fails the same way every time.
ALTER TABLE dispatch_attempts DROP CONSTRAINT dispatch_attempts_outcome_check;
ALTER TABLE dispatch_attempts ADD CONSTRAINT dispatch_attempts_outcome_check
    CHECK (outcome IN ('accepted', 'rejected', 'unreachable', 'refused', 'failed'));
