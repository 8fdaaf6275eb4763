#!/bin/bash
# Kafka's kafka-configs.sh (ConfigCommand, in the broker jar): the stand-in's health check asks
# the broker for its configuration, a real admin request.
exec java -Xmx256m -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' kafka.admin.ConfigCommand "$@"
