"""Clients of the APIs the tool talks to directly (Vercel now; Postgres next)."""
