"""A real gateway for the tests: this repository's Caddy, started with a
Caddyfile of the tests' own on free loopback ports, in front of the
misbehaving provider of provider.py.

The Caddy binary is $RESILIENT_CADDY when set, else built with
``go build ./cmd/caddy`` from the repository root into a temporary
directory. Every process and thread started here is stopped at the end
of the session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
REPO_ROOT = PACKAGE_ROOT.parent.parent

# the tests use the library from this source tree
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(HERE))

from provider import Provider  # noqa: E402

CADDYFILE = """\
{{
	admin off
	persist_config off
	auto_https off
	log {{
		output file {log}
		level INFO
	}}
}}

# the verdict on the gateway's answers that pass through reverse_proxy
(verdict_down) {{
	header_down X-Resilient-Outcome {{http.resilient.outcome}}
	header_down X-Resilient-Executed {{http.resilient.executed}}
	header_down X-Resilient-Attempts {{http.resilient.attempts}}
	header_down X-Resilient-Idempotency {{http.resilient.idempotency}}
}}

# the problem document of the answers the gateway writes in handle_errors
(problem) {{
	map {{http.resilient.retry_after}} {{problem_retry_after}} {{
		~^([0-9]+)$ `"retry_after":${{1}},`
		default ""
	}}
	header Content-Type application/problem+json
	respond `{{"type":"https://caddy-resilient.dev/outcomes/{{http.resilient.outcome}}","title":"Upstream call failed: {{http.resilient.outcome}}","status":{{err.status_code}},"detail":"The gateway could not complete the request.",{{problem_retry_after}}"outcome":"{{http.resilient.outcome}}","executed":"{{http.resilient.executed}}","attempts":{{http.resilient.attempts}},"idempotency":"{{http.resilient.idempotency}}","upstream":"{{http.resilient.upstream}}"}}` {{err.status_code}}
}}

(errors_with_verdict) {{
	handle_errors {{
		header X-Resilient-Outcome {{http.resilient.outcome}}
		header X-Resilient-Executed {{http.resilient.executed}}
		header X-Resilient-Attempts {{http.resilient.attempts}}
		header X-Resilient-Idempotency {{http.resilient.idempotency}}
		@later expression {{err.status_code}} == 503 || {{err.status_code}} == 429
		header @later Retry-After {{http.resilient.retry_after}}
		import problem
	}}
}}

# the library's decisions made visible: the gateway does not retry
http://127.0.0.1:{egress} {{
	reverse_proxy 127.0.0.1:{provider} {{
		transport resilient {{
			retry {{
				attempts 1
			}}
			breaker off
			idempotency
			deadline
		}}
		import verdict_down
	}}
	import errors_with_verdict
}}

# as an operator would run it: the gateway's own retries on
http://127.0.0.1:{retrying} {{
	reverse_proxy 127.0.0.1:{provider} {{
		transport resilient {{
			breaker off
			idempotency
			deadline
		}}
		import verdict_down
	}}
	import errors_with_verdict
}}

# no X-Resilient-* headers: the verdict is in the problem documents only
http://127.0.0.1:{bare} {{
	reverse_proxy 127.0.0.1:{provider} {{
		transport resilient {{
			retry {{
				attempts 1
			}}
			breaker off
			idempotency
			deadline
		}}
	}}
	handle_errors {{
		import problem
	}}
}}

# a provider that is down: refused, then the breaker answers
http://127.0.0.1:{dead} {{
	reverse_proxy 127.0.0.1:{dead_upstream} {{
		transport resilient {{
			retry {{
				attempts 1
			}}
			breaker {{
				consecutive_failures 1
				open_for 2s
			}}
			idempotency
			deadline
		}}
		import verdict_down
	}}
	import errors_with_verdict
}}
"""


@dataclass
class Gateway:
    """The URLs of the gateway's sites, and its log."""

    egress: str
    retrying: str
    bare: str
    dead: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def free_ports(n: int) -> List[int]:
    """n loopback ports free right now (held open together, so distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, Caddy gets SIGTERM when the
    test process dies, even killed, so no gateway outlives its tests."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_listening(port: int, proc: subprocess.Popen, log: Path, within: float = 20.0) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"caddy exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"caddy did not listen on {port} within {within}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def caddy_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("RESILIENT_CADDY")
    if given:
        path = Path(given)
        if not os.access(path, os.X_OK):
            pytest.fail(f"RESILIENT_CADDY={given} is not an executable")
        return path
    out = tmp_path_factory.mktemp("bin") / "caddy"
    try:
        subprocess.run(
            ["go", "build", "-o", str(out), "./cmd/caddy"],
            cwd=REPO_ROOT,
            check=True,
            timeout=900,
            capture_output=True,
        )
    except FileNotFoundError:
        pytest.fail("go is not on PATH: install Go or set RESILIENT_CADDY to a built caddy")
    except subprocess.CalledProcessError as e:
        pytest.fail(f"go build ./cmd/caddy failed:\n{e.stderr.decode(errors='replace')[-3000:]}")
    return out


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    p = Provider()
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def gateway(caddy_binary: Path, provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("gateway")
    egress, retrying, bare, dead, dead_upstream = free_ports(5)
    log = work / "caddy.log"
    caddyfile = work / "Caddyfile"
    caddyfile.write_text(
        CADDYFILE.format(
            log=log,
            provider=provider.port,
            egress=egress,
            retrying=retrying,
            bare=bare,
            dead=dead,
            dead_upstream=dead_upstream,
        )
    )
    env = dict(os.environ, XDG_CONFIG_HOME=str(work / "config"), XDG_DATA_HOME=str(work / "data"), HOME=str(work))
    out = open(work / "caddy.out", "wb")
    proc = subprocess.Popen(
        [str(caddy_binary), "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    try:
        for port in (egress, retrying, bare, dead):
            wait_listening(port, proc, work / "caddy.out")
        yield Gateway(
            egress=f"http://127.0.0.1:{egress}",
            retrying=f"http://127.0.0.1:{retrying}",
            bare=f"http://127.0.0.1:{bare}",
            dead=f"http://127.0.0.1:{dead}",
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
