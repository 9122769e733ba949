"""``ctower sink``: every topic into ClickHouse, committed only once inserted."""

from ctower.errors import CtowerError


class SinkError(CtowerError, RuntimeError):
    """The sink cannot go on (store refuses inserts, a table it cannot fill)."""
