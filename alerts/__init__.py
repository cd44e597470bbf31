"""The alert engine: rules over the trend data in PostgreSQL, an alert state machine, and
a delivery outbox to e-mail and signed webhooks.

    rules.py       YAML rules -> validated pydantic models (errors name file, rule, field)
    evaluator.py   event-time windows in SQL -> one Observation per key (breach / calm)
    lifecycle.py   pending -> firing -> resolved, one row per fingerprint and episode
    outbox.py      alert_deliveries rows: enqueue, claim with a lease, mark
    dispatcher.py  sends due deliveries: backoff with jitter, Retry-After, dead letters
    notifiers/     email.py (SMTP, Jinja2 text + HTML), webhook.py (Alertmanager JSON, HMAC)
    silences.py    stop notifications of matching alerts for a while
    backtest.py    replay rules over stored data with the live state machine
    service.py     AlertService: the Role `finsent run` / `finsent alerts run` start

Never imports torch or transformers.
"""
