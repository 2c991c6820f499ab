#!/bin/sh
# Runs the Python client's tests against a real gateway: this
# repository's Caddy (built here unless RESILIENT_CADDY names one),
# started by the tests on free loopback ports.
#
#   clients/python/run-tests.sh [pytest arguments]
#
# PYTHON picks the interpreter (default: /usr/bin/python3 when present,
# where Debian's python3-httpx, python3-pytest and python3-tenacity live).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${PYTHON:-}" ]; then
	if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
if [ -z "${RESILIENT_CADDY:-}" ]; then
	bin=$(mktemp -d)
	trap 'rm -rf "$bin"' EXIT INT TERM
	(cd "$here/../.." && go build -o "$bin/caddy" ./cmd/caddy)
	RESILIENT_CADDY="$bin/caddy"
	export RESILIENT_CADDY
fi
cd "$here"
"$PYTHON" -m pytest -q -p no:cacheprovider "$@"
