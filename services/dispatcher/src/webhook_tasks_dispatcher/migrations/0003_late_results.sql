-- When a result arrived after the task had expired (kept, shown marked late, never an outcome).
ALTER TABLE tasks ADD COLUMN late_result_at timestamptz;
