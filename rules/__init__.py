"""The rules on the windows: what is decided from the live state.

``config`` holds every threshold (documented in ``rules.toml``); ``pickup``,
``stock`` and ``lanes`` are the rule families, each on the partitions where
its key lives; ``alert_book`` turns their findings into alerts (one open per
key, a cooldown); ``rule_state`` persists them on a Faust changelog table.
"""
