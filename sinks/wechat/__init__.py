"""Alerts delivered to WeChat Work (企业微信) group robots.

``routes`` decides which robots hear of an alert, ``webhooks`` finds their
secret URLs and masks them, ``messages`` renders what they read, ``rate``
keeps each robot within its budget, ``outbox`` makes delivery survive
crashes, ``client`` talks to the webhook, ``delivery`` runs the service and
``command`` is ``ctower alerts``.
"""
