"""Source adapters: each sender's wire format in, an ingest Intake (or a status event) out.

Adapters never touch storage; every byte goes through :mod:`recsink.ingest`.
"""
