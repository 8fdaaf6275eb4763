"""Everything that talks to the outside world: Kafka, files, the model registry."""
