-- A graceful stop marks the row (stopped_at = now()), so the service is down at once and
-- shown as stopped, not crashed; a crashed one still turns down after service_down_time.
-- register() (a restart) clears it. Nullable, no default: existing rows are running or
-- crashed services, and adding the column rewrites nothing. IF NOT EXISTS: idempotent.

ALTER TABLE services ADD COLUMN IF NOT EXISTS stopped_at timestamptz;
