-- Issue 3: alerts carry the key of their condition, a suggested action and
-- the wall-clock time they were raised.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS key String DEFAULT alert_id AFTER alert_id;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS action Nullable(String) AFTER evidence;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS raised_at DateTime64(3, 'UTC') DEFAULT opened_at AFTER resolved_at;
