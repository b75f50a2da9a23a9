-- The trace of the task's dispatch, which the events about the task continue.
ALTER TABLE tasks ADD COLUMN traceparent text;
