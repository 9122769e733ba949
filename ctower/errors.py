"""The root of every error ctower raises on purpose.

Each part keeps its own exception (a bad setting, a broker that will not
start, a rules file refused...), and each message already says what is wrong
and what to do. Deriving them all from :class:`CtowerError` lets a caller that
only needs to know "ctower refused, and said why" catch one type; the
``ctower`` command does exactly that, printing the message instead of a
traceback, while any other exception (a real bug) keeps its traceback.

This module imports nothing of ours, so the lowest layers (schemas, settings)
can derive from it without an import cycle.
"""

from __future__ import annotations


class CtowerError(Exception):
    """An error whose message is meant for the operator, not a traceback."""
