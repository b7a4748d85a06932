"""The fleet: hosts publish what their store records to an MQTT broker; a collector writes it
into the fleet's database (PostgreSQL) through the same store code.

- :mod:`.broker`: ``--broker`` URLs, MQTT clients, the message envelope.
- :mod:`.publisher`: drains a store's outbox to the broker (QoS 1), resuming after restarts.
- :mod:`.collector`: subscribes to every host's topics and writes each message exactly once.
"""
