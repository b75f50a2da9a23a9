-- One row per task still waiting for its result; the scanner deletes a row when it fires.
CREATE TABLE deadlines (
    correlation_id  text        PRIMARY KEY,
    task_id         text        NOT NULL,
    deadline_at     timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Finding due deadlines reads the front of this index, so its cost does not grow
-- with the number of deadlines still pending.
CREATE INDEX deadlines_deadline_at_idx ON deadlines (deadline_at);

-- Tasks that reached a terminal state. A replay of the lifecycle topic from the
-- start brings TaskDispatched again; this table keeps it from reviving a deadline.
CREATE TABLE finished_tasks (
    correlation_id  text        PRIMARY KEY,
    finished_at     timestamptz NOT NULL DEFAULT now()
);
