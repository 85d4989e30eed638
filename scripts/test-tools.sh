#!/usr/bin/env bash
# Installs what the end-to-end client tests drive (tests/clients.rs):
#   - a Python virtualenv with tests/clients/requirements.txt
#     (openapi-python-client, schemathesis, selenium), from PyPI;
#   - Debian's chromium and chromium-driver, for the Swagger UI and console tests.
# Idempotent: a second run only checks. SAGAFLOW_TEST_VENV overrides the venv path.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SAGAFLOW_TEST_VENV:-target/test-tools/venv}"
requirements=tests/clients/requirements.txt
stamp="$venv/.requirements"

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
  echo "== python tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "== chromium and chromium-driver (Debian packages)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
fi
