"""Notifications: webhooks after an upload completes, and a pre-create hook that may
refuse an upload before anything is stored (see docs/DESIGN.md, "Notifications").

    signing.py    Gateway-Signature: HMAC-SHA256 over "<t>.<body>", and its verification
    events.py     the JSON events (upload.completed, upload.pre_create); never metadata values
    http.py       one signed POST (httpx, short timeouts, no redirects, bodies never logged)
    delivery.py   the per-process deliverer of the catalog's outbox: claims, backoff, dead letters
    precreate.py  the pre-create hook: accept, reject (403) or unavailable (503, fail closed)
"""
