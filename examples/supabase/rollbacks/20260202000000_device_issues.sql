-- Down file of supabase/migrations/20260202000000_device_issues.sql (the runbook's manual SQL).
-- If that migration also changed other tables (e.g. ALTER TABLE devices ADD COLUMN
-- last_issue_at), undo those changes here as well, or rolling forward will fail.
DROP TABLE IF EXISTS public.device_issues CASCADE;
-- ALTER TABLE public.devices DROP COLUMN IF EXISTS last_issue_at;
