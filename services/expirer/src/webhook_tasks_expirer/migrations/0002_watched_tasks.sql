-- Every dispatched task not yet finished, with the latest deadline it was given and when
-- that was last announced. Unlike `deadlines`, a row stays after its deadline fires, so the
-- reconciliation sweep can tell a task that lost its deadline, or whose expiry never took
-- effect, from a healthy one.
CREATE TABLE watched_tasks (
    correlation_id      text        PRIMARY KEY,
    task_id             text        NOT NULL,
    deadline_at         timestamptz NOT NULL,
    announced_at        timestamptz,
    reannounced         integer     NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The sweep looks for overdue tasks at the front of this index.
CREATE INDEX watched_tasks_deadline_at_idx ON watched_tasks (deadline_at);

INSERT INTO watched_tasks (correlation_id, task_id, deadline_at)
SELECT correlation_id, task_id, deadline_at FROM deadlines;

-- The pruning of old tombstones reads this index.
CREATE INDEX finished_tasks_finished_at_idx ON finished_tasks (finished_at);
