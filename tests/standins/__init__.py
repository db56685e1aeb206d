"""Local stand-ins for the external services the tool talks to (loopback only).

Each stand-in is a real server started and stopped from Python; the tests point both our own
clients and the official tools (e.g. the Vercel CLI) at it, so the stand-in has to behave like
the real service as far as the official client can tell.
"""
