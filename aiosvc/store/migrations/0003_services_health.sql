-- Health: whether the service can work, beside whether it is alive (last_seen_up).
-- Written with every state report, in the same UPDATE: `working` is true when every check
-- passed, and `health` holds each check's result, e.g.
-- {"consumers": "ok", "broker": "not connected", "periodic": "ok", "driver": "disk full"}.
-- Nullable, no default: NULL is "not known" (not reported since the start, or a service of
-- an older aiosvc), and adding the columns rewrites nothing. IF NOT EXISTS: idempotent.

ALTER TABLE services ADD COLUMN IF NOT EXISTS working boolean;
ALTER TABLE services ADD COLUMN IF NOT EXISTS health jsonb;
