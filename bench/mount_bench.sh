#!/usr/bin/env bash
# Measure `siffs mount` against the kernel, squashfuse, squashfuse_ll (and ratarmount when
# installed) with the shared harness, all in one run, as root (cold runs drop the page cache).
#
#   bench/mount_bench.sh [--runs 3] [--pin none|same|split] [IMAGES...]
#
# Images default to the harness' rootfs-gzip, rootfs-zstd and bigfile-gzip, built first with
# ../shared/bench/mkimages.py if missing. Prints the side-by-side table; results and the
# report land in $SIFFS_BENCH_OUT (default /tmp/siffs-bench/results).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SIFFS_SHARED:-$here/../shared}
images_dir=${SIFFS_BENCH_IMAGES:-/tmp/siffs-bench/images}
out=${SIFFS_BENCH_OUT:-/tmp/siffs-bench/results}
args=() images=()
while (($#)); do
    case $1 in
        --runs|--pin|--peers) args+=("$1" "$2"); shift 2 ;;
        *) images+=("$1"); shift ;;
    esac
done
if ((${#images[@]} == 0)); then
    images=("$images_dir/rootfs-gzip.sif" "$images_dir/rootfs-zstd.sif" "$images_dir/bigfile-gzip.sif")
    for img in "${images[@]}"; do
        [ -e "$img" ] || { python3 "$shared/bench/mkimages.py" --out "$images_dir"; break; }
    done
fi
siffs="$here/.venv/bin/siffs"
exec python3 "$shared/bench/run.py" "${images[@]}" --out "$out" "${args[@]}" \
    --candidate-name siffs \
    --candidate-mount "$siffs mount --allow-unsigned {sif} {mnt}" \
    --candidate-umount "$siffs umount {mnt}"
