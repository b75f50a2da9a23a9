-- A task's idempotency key was "<task id>/<request id or event id>". Ids may hold "/", so
-- two different requests could share a key (task "a/b" with request "c", task "a" with
-- request "b/c") and the second was taken for a duplicate. The task id is now escaped
-- ("%" as %25, "/" as %2F), so the first "/" ends it. Keys of task ids without either
-- character stay as they are; the others are rewritten, in two steps because the unique
-- index is checked row by row: each first to a key no other row can hold, then to its own.
UPDATE tasks
SET idempotency_key = 'rekeying:' || correlation_id || ':' || substr(idempotency_key, length(task_id) + 1)
WHERE strpos(task_id, '/') > 0 OR strpos(task_id, '%') > 0;

UPDATE tasks
SET idempotency_key = replace(replace(task_id, '%', '%25'), '/', '%2F')
    || substr(idempotency_key, length('rekeying:' || correlation_id || ':') + 1)
WHERE strpos(task_id, '/') > 0 OR strpos(task_id, '%') > 0;
