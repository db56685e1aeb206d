-- Down file of supabase/migrations/20260201000000_system_logs.sql (the runbook's manual SQL).
-- Undoes that migration: the table it created. CASCADE also drops foreign keys pointing at it.
DROP TABLE IF EXISTS public.system_logs CASCADE;
