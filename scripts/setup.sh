#!/usr/bin/env bash
# Sets up everything Atelier needs on Debian with Python 3.11: the Debian packages that hold
# default data and audio rendering, a virtualenv in .venv, and the project with its pins (plus its
# test and k8s extras).
# Idempotent: a second run checks and returns in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# dataset-fashion-mnist: the default image corpus; gcompris-qt-data: the default painting corpus (eight
# public-domain Van Gogh paintings in its "details" activity); opencv-doc: four sample videos of real
# footage for the default video corpus; fluidsynth: renders the music gallery's audio;
# chromium-headless-shell: the end-to-end test opens the gallery site in it.
DEBIAN_PACKAGES=(dataset-fashion-mnist gcompris-qt-data opencv-doc fluidsynth chromium-headless-shell)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$python" -m venv .venv

# Reinstall only when the pins change.
stamp=.venv/.atelier-pyproject.sha256
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # k8s: dagster-k8s and dagster-postgres, so the Kubernetes route's tests run (no cluster needed)
  .venv/bin/pip install --quiet -e ".[test,k8s]"
  echo "$wanted" > "$stamp"
fi
echo "set-up done: .venv is ready"
