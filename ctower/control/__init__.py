"""Operators' controls: the records people publish to steer the pipeline.

Approving, rejecting and marking action orders (``actions``), handling
customer-service tasks (``tasks``) and acknowledging alerts
(``alert_acks``), each a control record on its topic, published the same
way by the CLI and the dashboard. Coupon policies are the coupon service's
(:mod:`ctower.coupons.policy`).
"""
