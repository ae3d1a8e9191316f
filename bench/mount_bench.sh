#!/usr/bin/env bash
# Measure `siffs mount` against the kernel, squashfuse, squashfuse_ll (and ratarmount when
# installed) with bench/'s own harness, all in one run, as root (cold runs drop the page cache).
#
#   bench/mount_bench.sh [run.py options: --runs 3 --limit 180 --pin none|same|split
#                         --peer 'NAME=MOUNT::UMOUNT' ...] [IMAGES...]
#
# Images default to rootfs-gzip, rootfs-zstd and bigfile-gzip in $SIFFS_BENCH_IMAGES
# (default /tmp/siffs-bench/images-own), built first with bench/mkimages.py when missing or
# stale (a few minutes; nothing is downloaded). Prints the side-by-side table; results.jsonl and
# report.md land in $SIFFS_BENCH_OUT (default /tmp/siffs-bench/results-own).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python="$here/.venv/bin/python"
[ -x "$python" ] || { echo "mount_bench: $python missing; set up the venv first (README, Install)" >&2; exit 2; }
images_dir=${SIFFS_BENCH_IMAGES:-/tmp/siffs-bench/images-own}
out=${SIFFS_BENCH_OUT:-/tmp/siffs-bench/results-own}
args=() images=()
while (($#)); do
    case $1 in
        --runs|--limit|--pin|--peer|--peers|--skip|--work) args+=("$1" "$2"); shift 2 ;;
        -*) echo "mount_bench: unknown option $1 (see bench/run.py --help)" >&2; exit 2 ;;
        *) images+=("$1"); shift ;;
    esac
done
if ((${#images[@]} == 0)); then
    nice "$python" "$here/bench/mkimages.py" --out "$images_dir" --comps gzip,zstd --bigfile-comps gzip
    images=("$images_dir/rootfs-gzip.sif" "$images_dir/rootfs-zstd.sif" "$images_dir/bigfile-gzip.sif")
fi
exec "$python" "$here/bench/run.py" "${images[@]}" --out "$out" --siffs "$here/.venv/bin/siffs" ${args[@]+"${args[@]}"}
