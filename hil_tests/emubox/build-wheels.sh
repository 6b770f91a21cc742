#!/usr/bin/env bash
# Build aarch64 wheels from source distributions, once, inside the emulated box's base under
# qemu-user (the base's Python, compiler and libc, so the wheels fit the box), and cache them.
#   hil_tests/emubox/build-wheels.sh CACHE_DIR WHEELHOUSE
# Every *.tar.gz in WHEELHOUSE without a cached wheel is built (its build tools come from the
# wheelhouse too, offline); the cached wheels of all of them are copied into WHEELHOUSE and the
# source distributions removed, so first boot installs wheels only, as from an operator's
# wheelhouse of prebuilt aarch64 wheels. The base tree is never written: the build runs in an
# overlay. Needs root and a built base (build-base.sh).
set -euo pipefail
cache=${1:?usage: build-wheels.sh CACHE_DIR WHEELHOUSE}
house=$(realpath "${2:?usage: build-wheels.sh CACHE_DIR WHEELHOUSE}")
wheels="$cache/wheels"
mkdir -p "$wheels"

# name-version of an sdist, as its wheel starts (PEP 427 escapes '-' in the name as '_').
wheel_prefix() { local base=${1%.tar.gz}; local name=${base%-*}; echo "${name//-/_}-${base##*-}-"; }

todo=()
for sdist in "$house"/*.tar.gz; do
  [ -e "$sdist" ] || continue
  compgen -G "$wheels/$(wheel_prefix "$(basename "$sdist")")*.whl" >/dev/null || todo+=("$sdist")
done

if [ ${#todo[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "error: building aarch64 wheels needs root" >&2; exit 1; }
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
  work=$(mktemp -d "$cache/wheels.XXXXXX")
  mkdir -p "$work/up" "$work/work" "$work/root"
  mount -t overlay overlay -o "lowerdir=$cache/rootfs,upperdir=$work/up,workdir=$work/work" "$work/root"
  trap 'umount "$work/root/proc" "$work/root/root/src" "$work/root" 2>/dev/null || true; rm -rf "$work"' EXIT
  mount -t proc proc "$work/root/proc"
  mkdir -p "$work/root/root/src" "$work/root/root/out"
  mount --bind "$house" "$work/root/root/src"
  for sdist in "${todo[@]}"; do
    echo "== building $(basename "$sdist") for aarch64"
  done
  # The wheelhouse's pip, setuptools and wheel, as first boot would use them.
  chroot "$work/root" sh -c 'python3 -m venv /root/venv &&
    /root/venv/bin/pip install --quiet --no-index --find-links /root/src pip setuptools wheel &&
    /root/venv/bin/pip wheel --quiet --no-index --find-links /root/src --no-deps \
      -w /root/out "$@"' sh \
    "${todo[@]/#"$house"//root/src}"
  cp "$work/root/root/out/"*.whl "$wheels/"
fi

for sdist in "$house"/*.tar.gz; do
  [ -e "$sdist" ] || continue
  cp "$wheels/$(wheel_prefix "$(basename "$sdist")")"*.whl "$house/"
  rm "$sdist"
done
