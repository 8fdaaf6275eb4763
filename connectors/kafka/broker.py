"""A real single-node Apache Kafka broker (KRaft, broker + controller) without Docker.

The official broker jars come from Maven Central: ``pom.xml`` next to this file names
``org.apache.kafka:kafka_2.13`` and a log4j backend, and ``mvn dependency:copy-dependencies``
copies them into a cache outside the repository::

    ${GENREC_KAFKA_HOME:-~/.cache/genrec/kafka}/<version>/libs

The broker listens on 127.0.0.1 only, with free ports picked on first start. Everything about
one broker lives in its data directory: ``server.properties``, the KRaft log dirs, the broker
log (``logs/server.log``) and a state file (``broker.json``: pid, ports, cluster id). Opening
a ``LocalKafkaBroker`` on an existing data directory reuses its ports and data, so a broker can
be stopped and started again at the same address (broker-outage tests), and separate processes
(``genrec kafka up`` / ``status`` / ``down``) can manage the same broker.

Requires Java 17+ (Kafka 4) and, for the first download only, Maven 3 with access to Maven
Central.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from pipeline.runtime.runlock import process_alive

log = logging.getLogger(__name__)

DEFAULT_KAFKA_VERSION = "4.1.1"
POM_PATH = Path(__file__).with_name("pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
STATE_FILE = "broker.json"
ACTIVE_FILE = "active.json"  # in kafka_cache_root(): the data dir 'genrec kafka up' last started
_COMPLETE_MARKER = ".complete"
_BROKER_MAIN = "kafka.Kafka"


class BrokerError(RuntimeError):
    """The local broker could not be downloaded, started, reached or stopped."""


def kafka_version() -> str:
    """Broker version to run: ``$GENREC_KAFKA_VERSION`` or the tested default."""
    return os.environ.get("GENREC_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)


def kafka_cache_root() -> Path:
    """Root of the jar cache and of the CLI's default broker: ``$GENREC_KAFKA_HOME`` or
    ``~/.cache/genrec/kafka`` (kept outside the clone so it survives ``git clean``)."""
    override = os.environ.get("GENREC_KAFKA_HOME")
    return Path(override) if override else Path.home() / ".cache" / "genrec" / "kafka"


def default_broker_dir() -> Path:
    """Data directory of the broker that ``genrec kafka up`` manages by default."""
    return kafka_cache_root() / "local"


def active_broker_dir() -> Path:
    """Data directory of the broker that ``genrec kafka up`` last started (``--dir`` or not),
    as recorded in ``kafka_cache_root()/active.json``; the default one if none is recorded."""
    path = kafka_cache_root() / ACTIVE_FILE
    try:
        return Path(json.loads(path.read_text())["data_dir"])
    except FileNotFoundError:
        return default_broker_dir()
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} does not name a broker directory ({exc!r}); delete it, then run "
            "'genrec kafka up --dir DIR' again"
        ) from None


def remember_active_broker(directory: Path) -> None:
    """Record ``directory`` as the broker other commands use by default (``kafka up``)."""
    path = kafka_cache_root() / ACTIVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"data_dir": str(Path(directory).resolve())}) + "\n")
    tmp.replace(path)


def forget_active_broker(directory: Path) -> None:
    """Drop the record of ``directory`` (``kafka down``); a record of another broker stays."""
    if active_broker_dir() == Path(directory).resolve():
        (kafka_cache_root() / ACTIVE_FILE).unlink(missing_ok=True)


def running_local_bootstrap(directory: Path | None = None) -> str | None:
    """Bootstrap servers of the local broker if it is running, else None: the one in
    ``directory``, by default the one ``genrec kafka up`` last started, else the one in the
    default directory."""
    candidates = [directory] if directory is not None else [active_broker_dir()]
    if directory is None and default_broker_dir() not in candidates:
        candidates.append(default_broker_dir())
    for candidate in candidates:
        if (candidate / STATE_FILE).exists():
            broker = LocalKafkaBroker(candidate)
            if broker.is_running():
                return broker.bootstrap_servers
    return None


def ensure_kafka_jars(version: str | None = None, timeout_s: float = 900.0) -> Path:
    """Return the directory holding the broker's jars, downloading them with Maven if needed.

    The download goes to a temporary directory that is renamed into place with a completion
    marker inside, so an interrupted download is never mistaken for a cached one and two
    processes downloading at once do not corrupt each other.
    """
    version = version or kafka_version()
    libs = kafka_cache_root() / version / "libs"
    if (libs / _COMPLETE_MARKER).exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"Kafka {version} jars are not cached in {libs} and Maven ('mvn') is not on PATH: "
            "install Maven 3 (e.g. 'apt-get install maven') or point GENREC_KAFKA_HOME at a "
            "cache that has them."
        )
    partial = libs.with_name(f"libs.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM_PATH),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    log.info("downloading Apache Kafka %s jars from Maven Central into %s", version, libs)
    started = time.monotonic()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BrokerError(f"Maven download of Kafka {version} took over {timeout_s:.0f}s") from exc
    if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise BrokerError(
            f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} (exit "
            f"{result.returncode}; command: {' '.join(cmd)}). Check network access to Maven "
            f"Central and the version. Maven said:\n{output}"
        )
    (partial / _COMPLETE_MARKER).write_text(f"{version}\n")
    try:
        if libs.exists():  # a stale, incomplete download
            shutil.rmtree(libs)
        partial.rename(libs)
    except OSError:
        # Another process finished first; its copy is as good as ours.
        shutil.rmtree(partial, ignore_errors=True)
        if not (libs / _COMPLETE_MARKER).exists():
            raise
    log.info("Kafka %s jars ready in %.1fs", version, time.monotonic() - started)
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID, URL-safe base64 without padding (as Kafka's
    ``Uuid.randomUuid``, which also avoids ids that start with '-' because the tools would
    read them as flags)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java is not installed: the local Kafka broker needs Java 17 or newer")
    return java


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("r", errors="replace") as handle:
        return "".join(deque(handle, maxlen=lines))


def _proc_is_ours() -> bool:
    """True if ``/proc`` shows this process's PID namespace. A sandbox or CI runner that starts
    us in a new PID namespace without mounting a new ``/proc`` leaves ``/proc/<pid>`` naming
    other processes, so pid-based look-ups there would be wrong."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    if not process_alive(pid):
        return False
    if _proc_is_ours():  # Linux: an exited child that nobody reaped yet is a zombie, not alive
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
        except (OSError, IndexError):
            return True  # cannot tell; the signal check above said it exists
    return True


@dataclass
class BrokerState:
    """What ``broker.json`` records about a local broker."""

    port: int
    controller_port: int
    cluster_id: str
    version: str
    data_dir: str
    pid: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalKafkaBroker:
    """One local KRaft broker+controller process bound to a data directory.

    Args:
        data_dir: where config, data, logs and the state file live. If it already holds a
            ``broker.json``, its ports, cluster id and version are reused.
        port: client (PLAINTEXT) port; default: the recorded one, else a free one.
        controller_port: KRaft controller port; default as for ``port``.
        version: Kafka version; default: the recorded one, else ``kafka_version()``.
        heap: JVM max heap (``-Xmx``); the broker is small, the machine may be too.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        version: str | None = None,
        heap: str = "512m",
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.heap = heap
        recorded = self._read_state()
        self.state = BrokerState(
            port=port or (recorded.port if recorded else free_port()),
            controller_port=controller_port
            or (recorded.controller_port if recorded else free_port()),
            cluster_id=recorded.cluster_id if recorded else new_cluster_id(),
            version=version or (recorded.version if recorded else kafka_version()),
            data_dir=str(self.data_dir),
            pid=recorded.pid if recorded else None,
        )
        self._process: subprocess.Popen[bytes] | None = None

    # -- paths and addresses -------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return self.state.bootstrap_servers

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_path(self) -> Path:
        """The broker's own log (log4j)."""
        return self.log_dir / "server.log"

    @property
    def console_path(self) -> Path:
        """The JVM's stdout/stderr (startup failures before logging is set up land here)."""
        return self.log_dir / "console.log"

    @property
    def pid(self) -> int | None:
        return self.state.pid

    # -- lifecycle -----------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True if this data directory's broker process is alive (it may still be starting)."""
        if self._process is not None and self._process.pid == self.state.pid:
            return self._process.poll() is None  # our own child: the kernel's word, no guessing
        pid = self.state.pid
        if pid is None or not _pid_alive(pid):
            return False
        if not _proc_is_ours():
            return True
        try:  # guard against a recycled pid that now belongs to something else
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        except OSError:
            return True
        if args == [b""]:  # a kernel thread or an exiting process: no command line to compare
            return True
        return _BROKER_MAIN.encode() in args and str(self.properties_path).encode() in args

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the broker (downloading jars and formatting storage if needed) and wait until
        it answers metadata requests. Returns the bootstrap servers. No-op if already up."""
        if self.is_running():
            self.wait_ready(timeout_s)
            return self.bootstrap_servers
        libs = ensure_kafka_jars(self.state.version)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(self._server_properties())
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            self._format_storage(libs)
        cmd = [*self._java_command(libs, self.heap), _BROKER_MAIN, str(self.properties_path)]
        with self.console_path.open("ab") as console:
            # A new session: the broker outlives `genrec kafka up` and ignores its terminal.
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.state.pid = self._process.pid
        self._write_state()
        log.info("started Kafka %s broker pid %d on %s", self.state.version, self.pid, self)
        try:
            self.wait_ready(timeout_s)
        except BrokerError:
            self.stop()
            raise
        return self.bootstrap_servers

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the broker answers a metadata request, or raise ``BrokerError`` with the
        tail of its log if it exits or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                code = self._process.poll() if self._process is not None else None
                raise BrokerError(
                    f"Kafka broker for {self.data_dir} is not running (exit code {code}); "
                    f"see {self.log_path} and {self.console_path}.\n{self.log_tail()}"
                )
            if self._answers_metadata():
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"Kafka broker pid {self.pid} at {self.bootstrap_servers} did not answer "
                    f"metadata requests within {timeout_s:.0f}s; see {self.log_path}.\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker: SIGTERM (controlled shutdown), then SIGKILL after ``timeout_s``.
        Data and ports are kept, so ``start()`` brings back the same broker."""
        pid = self.state.pid
        if pid is not None and self.is_running():
            os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout_s):
                log.warning(
                    "Kafka broker pid %d ignored SIGTERM for %.0fs; killing", pid, timeout_s
                )
                os.kill(pid, signal.SIGKILL)
                self._wait_exit(pid, 10.0)
        self._process = None
        self.state.pid = None
        if self.data_dir.exists():
            self._write_state()

    def restart(self, timeout_s: float = 120.0) -> str:
        """Stop and start the same broker (same ports, same data)."""
        self.stop()
        return self.start(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker log and of the JVM console, for error messages."""
        return (
            f"--- {self.log_path} (last {lines} lines) ---\n{_tail(self.log_path, lines)}"
            f"--- {self.console_path} (last {lines} lines) ---\n{_tail(self.console_path, lines)}"
        )

    def __enter__(self) -> LocalKafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"LocalKafkaBroker({self.bootstrap_servers}, controller port "
            f"{self.state.controller_port}, data {self.data_dir})"
        )

    # -- internals -----------------------------------------------------------------------------

    def _read_state(self) -> BrokerState | None:
        path = self.data_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            return BrokerState(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise BrokerError(
                f"{path} is not a valid broker state file ({exc}); delete the directory "
                f"{self.data_dir} to start a fresh broker"
            ) from exc

    def _write_state(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2) + "\n")
        tmp.replace(self.state_path)

    def _server_properties(self) -> str:
        port, controller = self.state.port, self.state.controller_port
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft"),
            "num.partitions": "1",
            # Single node: every internal topic has exactly one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests join consumer groups often; do not wait 3s for more members each time.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created explicitly (genrec topics create); a typo should fail loudly.
            "auto.create.topics.enable": "false",
            # Replays carry old event times; never expire data by time on a test broker.
            "log.retention.ms": "-1",
            # A laptop or 2-core CI machine: few threads.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _java_command(self, libs: Path, heap: str) -> list[str]:
        return [
            _find_java(),
            f"-Xmx{heap}",
            "-Xms64m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            str(libs / "*"),
        ]

    def _format_storage(self, libs: Path) -> None:
        cmd = [
            *self._java_command(libs, "256m"),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.state.cluster_id,
            "-c",
            str(self.properties_path),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.data_dir} failed (exit {result.returncode}):"
                f"\n{(result.stdout + result.stderr).strip()[-3000:]}"
            )

    def _answers_metadata(self) -> bool:
        # A plain TCP connect first: cheap, and it keeps kafka-python from logging connection
        # errors on every attempt while the JVM is still starting.
        try:
            with socket.create_connection(("127.0.0.1", self.state.port), timeout=1.0):
                pass
        except OSError:
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="genrec-broker-probe",
                request_timeout_ms=5000,
            )
        except (KafkaError, OSError):
            return False
        try:
            cluster = admin.describe_cluster()
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
        if cluster.get("cluster_id") != self.state.cluster_id:
            # Something else answers on our port (e.g. another broker): not ours, not ready.
            return False
        return bool(cluster.get("brokers"))

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None:
                try:
                    self._process.wait(timeout=0.1)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return not _pid_alive(pid)
