#!/usr/bin/env bash
# Build pyfuse3 with siffs' patches (contrib/pyfuse3-patches/*.patch) into a virtual environment.
#
#   contrib/build-pyfuse3.sh [VENV]        (default: .venv of this checkout)
#
# The patches let a file system ask the kernel for caches stock pyfuse3 cannot request
# (symlink targets, directory listings, no open/opendir round trips) and cut the system calls
# per request; each patch's header says why. The pinned sdist is downloaded from PyPI and its
# SHA-256 checked before anything is built; Cython (a build requirement of the sdist, which
# compiles the .pyx) comes from PyPI through pip's isolated build.
#
# Nothing is lost when the build fails: the stock pyfuse3 already in the venv stays, and siffs
# detects each patch at run time (slower without them, same results). Exit status 0 means
# the patched build is installed (or already was).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
version=3.5.0
sha256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
patches=("$here"/contrib/pyfuse3-patches/*.patch)
stamp="$venv/siffs-pyfuse3.stamp"

want=$( (echo "pyfuse3 $version $sha256"; cat "${patches[@]}") | sha256sum | cut -d' ' -f1)
if [ -e "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "siffs: patched pyfuse3 $version already installed in $venv" >&2
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "siffs: building pyfuse3 $version with ${#patches[@]} patches" >&2
"$venv/bin/pip" download -q --disable-pip-version-check --no-binary :all: --no-deps \
    -d "$work" "pyfuse3==$version"
sdist="$work/pyfuse3-$version.tar.gz"
echo "$sha256  $sdist" | sha256sum -c --quiet -
tar -xzf "$sdist" -C "$work"
for p in "${patches[@]}"; do
    patch -d "$work/pyfuse3-$version" -p1 --forward --quiet <"$p"
done
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall \
    "$work/pyfuse3-$version"
"$venv/bin/python" -c 'import pyfuse3; assert pyfuse3.Operations.enable_no_open is False; assert callable(pyfuse3.main_sync); assert pyfuse3.Operations.fast_ops is None; assert "wake_path" in pyfuse3.main_sync.__code__.co_varnames; assert pyfuse3.FAST_OPS_VERSION == 2'
echo "$want" >"$stamp"
echo "siffs: patched pyfuse3 installed" >&2
