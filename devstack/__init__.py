"""The local development stack: what a laptop needs and production does not.

``broker`` downloads and runs Apache Kafka in KRaft mode (``ctower kafka
up``); ``store_front`` serves ClickHouse's HTTP interface over the embedded
chdb store so every other process can be an ordinary clickhouse-connect
client; ``demo`` starts the whole pipeline as child processes. In
production Kafka and ClickHouse are servers (``KAFKA_BOOTSTRAP``,
``CTOWER_STORE_DSN``) and none of this runs.
"""
