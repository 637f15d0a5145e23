#!/usr/bin/env bash
# Build the Debian package: packaging/build-deb.sh [OUTDIR]   (default: dist/)
# Leaves OUTDIR/netd-hook_<version>_all.deb (and the build log next to it).
#
# dpkg-buildpackage wants debian/ at the root of a source tree, so this lays one out in a
# temporary directory: the files the package is built from, with packaging/debian as debian/.
# Needs dpkg-dev, debhelper, dh-python, python3-venv and ca-certificates (scripts/dev.sh
# installs them), and PyPI: debian/rules fetches the pinned dependencies.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/netd_hook/__init__.py")
changelog=$(dpkg-parsechangelog -l "$root/packaging/debian/changelog" -S Version)
if [ "$version" != "$changelog" ]; then
    echo "netd_hook/__init__.py says $version, packaging/debian/changelog says $changelog:" \
         "add a changelog entry (dch -v $version)" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/netd-hook-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
src=$tmp/netd-hook-$version
mkdir "$src"
# The working tree's files (not only what is committed), without caches.
cp -r "$root/pyproject.toml" "$root/README.md" "$root/netd_hook" "$root/units" "$src/"
cp -r "$root/packaging/debian" "$src/debian"
cp -r "$root/packaging/prometheus" "$src/prometheus"
find "$src" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +

log=$out/netd-hook_${version}_all.build.log
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "dpkg-buildpackage failed; full log: $log" >&2
    exit 1
fi
deb=netd-hook_${version}_all.deb
mv "$tmp/$deb" "$out/$deb"
echo "$out/$deb"
