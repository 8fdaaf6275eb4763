#!/bin/bash
# Entry point of the Kafka stand-in, as the official image's: every KAFKA_<NAME> variable is the
# broker setting <name> (lower case; '_' -> '.', '__' -> '_', '___' -> '-'), CLUSTER_ID formats
# the KRaft storage on first start, then the broker runs in the foreground.
set -euo pipefail
props=/opt/kafka/config/server.properties
: > "$props"
for name in $(compgen -e); do
  case $name in
    KAFKA_HEAP_OPTS | KAFKA_OPTS) continue ;;  # JVM settings, not broker settings
    KAFKA_*) ;;
    *) continue ;;
  esac
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/-}
  key=${key//__/@}
  key=${key//_/.}
  echo "${key//@/_}=${!name}" >> "$props"
done
: "${CLUSTER_ID:?set CLUSTER_ID (a KRaft cluster id) in the kafka service environment}"
# shellcheck disable=SC2206  # KAFKA_HEAP_OPTS holds several JVM flags, as in the official image
java=(java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms256m} -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
      -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*')
"${java[@]}" kafka.tools.StorageTool format --cluster-id "$CLUSTER_ID" --config "$props" \
  --ignore-formatted
exec "${java[@]}" kafka.Kafka "$props"
