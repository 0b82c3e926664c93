# Sourced by scripts/demo and scripts/test: make .venv with Python 3.11+ and install Accord into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "Accord needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PY" --version)" >&2
  "$PY" -m venv .venv
fi
install_accord() {
  local extras="$1"
  local stamp=".venv/.installed$extras"
  # Reinstall only when pyproject.toml changed since the last install.
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing accord$extras into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extras" 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    .venv/bin/python -c 'import accord' || { echo "install failed" >&2; exit 1; }
    touch "$stamp"
  fi
}
