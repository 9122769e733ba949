"""Sinks: processes of their own that deliver what the worker decided.

``clickhouse`` (``ctower sink``) writes every topic to the store the
dashboard reads; ``wechat`` (``ctower alerts deliver``) sends alerts to
WeChat Work group robots. Each commits its offsets only after delivery.
"""
