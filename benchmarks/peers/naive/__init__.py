"""The "naive" peer: the pipeline a developer writes first with paho, aiokafka, Faust and influxdb-client.

One Kafka record per MQTT message (:mod:`.bridge`), a Faust agent that handles one record at a
time with a scalar threshold per reading and serializes ``influxdb_client.Point`` objects in
batches (:mod:`.app`). Started and stopped by :mod:`benchmarks.peers.naive_peer`.
"""
