-- Keyed fingerprints of a task's webhookAuth (never the value itself), kept with the task
-- so that a callback echoing the credential is masked after the sealed value is gone.
ALTER TABLE tasks ADD COLUMN auth_fingerprints text;
