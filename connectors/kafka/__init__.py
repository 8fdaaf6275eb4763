"""Kafka connectors: local broker, topic admin, client settings, producer/replayer.

Submodules import kafka-python lazily where they can, so importing this package is cheap.
"""
