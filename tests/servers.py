"""Real servers on loopback for the distributed tests: PostgreSQL (initdb + pg_ctl in a temp dir) and an
MLflow tracking server backed by it. Both are stopped when the test module ends."""
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from waits import Launched

PASSWORD = "pg-s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str):
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def start_postgres():
    """Start a private server on a free loopback port; returns (port, stop). stop() also removes its files."""
    initdb, pg_ctl, psql = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("psql")
    if not (initdb and pg_ctl and psql):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `apt-get install postgresql` "
                    "(.ci/run does); the distributed tests need a real server")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    # Not under pytest's tmp dirs: those are private to root, and the server runs as the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="alexnet_exp_pg_"))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_postgres:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
        shutil.chown(pwfile, "postgres")
    subprocess.run(as_postgres + [initdb, "-D", str(data), "-U", "alex", "--auth=scram-sha-256",
                                  f"--pwfile={pwfile}", "-E", "UTF8"], check=True, capture_output=True)
    port = free_port()
    subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "300", "-o",
                                  f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200",
                                  "start"], check=True, capture_output=True)
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    for db in ("optuna", "mlflow"):
        subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "alex", "-d", "postgres", "-c",
                        f"CREATE DATABASE {db}"], check=True, capture_output=True, env=env)

    def stop():
        subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    def restart(down_seconds: float = 2.0):
        """Drop every connection: stop the server, stay down a moment, start it again."""
        subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], check=True,
                       capture_output=True)
        time.sleep(down_seconds)
        subprocess.run(as_postgres + [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "300", "-o",
                                      f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200",
                                      "start"], check=True, capture_output=True)

    return port, stop, restart


def start_mlflow_server(backend_uri: str, artifacts):
    port = free_port()
    # Launched reads its log as it comes: an unread pipe would fill and block the server mid-test.
    proc = Launched([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                     "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                     "--workers", "1"])
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(url + "/health", timeout=10):
                return True
        except OSError:
            return False
    try:
        proc.until(healthy, "the mlflow server to answer /health")
    except AssertionError:
        proc.kill()
        raise
    return url, proc
