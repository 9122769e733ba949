"""Benchmarks, run on demand and never by the test suite: they print figures.

``engine`` is ``ctower bench`` (the worker's drain rate against a bare
consumer, the sink's rows per second) and the group of the others:
``decisions`` (event to alert, reservations under load, built on
``coupons``), ``dashboard`` (page queries on a filled store), ``peer`` (the
same windows in Quix Streams and Bytewax, ``peers/``) and ``sink`` (the
ClickHouse sink's stages). ``profiling`` samples a process with py-spy.
"""
