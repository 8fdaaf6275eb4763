# Local stand-in for apache/kafka:4.1.1 (scripts/stack-test.sh): the broker jars that
# `genrec kafka up` runs (connectors/kafka/pom.xml, from Maven Central) on bookworm's Java 17,
# started from the same KAFKA_* environment as the official image.
ARG DEBIAN_IMAGE=genrec-standin/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
COPY libs /opt/kafka/libs
COPY log4j2.properties /opt/kafka/config/log4j2.properties
COPY kafka-run.sh kafka-configs.sh /opt/kafka/bin/
CMD ["/opt/kafka/bin/kafka-run.sh"]
