-- A result that arrives after the task expired gets its own comment, marked late, once per task;
-- it is not a second outcome, so it sits beside the terminal comment rather than replacing it.
ALTER TABLE comments DROP CONSTRAINT comments_kind_check;
ALTER TABLE comments ADD CONSTRAINT comments_kind_check
    CHECK (kind IN ('result', 'error', 'expired', 'progress', 'late_result'));

DROP INDEX comments_one_terminal_per_task;
CREATE UNIQUE INDEX comments_one_terminal_per_task
    ON comments (correlation_id) WHERE kind NOT IN ('progress', 'late_result');
CREATE UNIQUE INDEX comments_one_late_result_per_task
    ON comments (correlation_id) WHERE kind = 'late_result';

-- Each user is told once per task and kind: the outcome, and a late result if one comes.
ALTER TABLE notifications DROP CONSTRAINT notifications_one_per_user_and_task;
ALTER TABLE notifications ADD CONSTRAINT notifications_one_per_user_task_and_kind
    UNIQUE (correlation_id, user_id, kind);
