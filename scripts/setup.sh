#!/usr/bin/env bash
# Set up this checkout: a virtualenv in .venv with bitchat-node installed.
#   scripts/setup.sh          the agent and the fleet tools
#   scripts/setup.sh --test   also the test tools, and (as root on Debian) the system
#                             components the tests start for real (scripts/debian-packages.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: bitchat-node needs Python 3.11 or newer ($python is $("$python" -V 2>&1))" >&2
  exit 1
fi

if [ "$want_test" = 1 ]; then
  packages=$(sed -e 's/#.*//' scripts/debian-packages.txt | tr -s ' \n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=$(for p in $packages; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done)
    if [ -n "$missing" ]; then
      echo "== installing Debian packages: $(echo $missing)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
  else
    echo "note: not root or not Debian: tests needing $(echo $packages) may skip" >&2
  fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=68" wheel
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "== ready: .venv/bin/bitchat-node, .venv/bin/bitchat-fleet"
