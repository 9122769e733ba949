"""ClickHouse's HTTP interface in front of the embedded chdb store.

``server`` is the aiohttp server and its lifecycle, ``handler`` one request
in and one reply out, ``protocol`` ClickHouse's error model and the SQL
lexing the handler needs.
"""
