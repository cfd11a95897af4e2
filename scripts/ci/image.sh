# Sourced by .ci/run: builds the Dockerfile's CPU variant with buildah (chroot isolation, vfs storage, nothing
# cached between runs) from a base imported from a clean root, and runs the image's server as its non-root user.
# podman/crun cannot start containers in this sandbox (setrlimit is refused), so `buildah run` stands in for
# `docker run`. Bash, set -euo pipefail.

QS_BUILDAH_DIR=""
# TMPDIR too: `buildah run` mounts the container's root under it, and teardown finds what runs there by that path.
buildah_() {
  mkdir -p "$QS_BUILDAH_DIR/tmp"
  TMPDIR="$QS_BUILDAH_DIR/tmp" buildah --root "$QS_BUILDAH_DIR/storage" --runroot "$QS_BUILDAH_DIR/run" \
    --storage-driver vfs "$@"
}

# import_base_image ROOT: tags a root folder as debian:12 and debian:12-slim (no registry is reachable here; the
# Dockerfile keeps `FROM debian:12` for real users).
import_base_image() {
  local root=$1 ctr
  ctr=$(buildah_ from scratch)
  buildah_ copy --quiet "$ctr" "$root" / >/dev/null
  buildah_ config --cmd /bin/bash "$ctr"
  buildah_ commit --quiet "$ctr" docker.io/library/debian:12 >/dev/null
  buildah_ tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  buildah_ rm "$ctr" >/dev/null
}

# build_cpu_image SRC TAG
build_cpu_image() {
  local src=$1 tag=$2
  buildah_ build --isolation chroot --format docker --pull=never --layers=false --build-arg VARIANT=cpu -t "$tag" -f "$src/Dockerfile" "$src"
}

# The image's entrypoint as uid 10001, in the background; QS_IMAGE_CTR and QS_IMAGE_PID are set.
QS_IMAGE_CTR=""; QS_IMAGE_PID=""
start_image_server() {
  local tag=$1 log=$2
  QS_IMAGE_CTR=$(buildah_ from --pull=never "$tag")
  buildah_ run --isolation chroot --user 10001:10001 "$QS_IMAGE_CTR" -- quantserve serve >"$log" 2>&1 &
  QS_IMAGE_PID=$!
}

image_exec() { buildah_ run --isolation chroot --user 10001:10001 "$QS_IMAGE_CTR" -- "$@"; }

# The pids of the image's `quantserve serve` (run by buildah inside the container's root, under our TMPDIR).
image_server_pids() { quantserve_pids_under "$QS_BUILDAH_DIR"; }

# Files in the runtime image that only a build needs: a compiler, a linker, build tools.
image_build_tools() {
  local mnt f
  mnt=$(buildah_ mount "$QS_IMAGE_CTR")
  for f in gcc g++ cc c++ cpp ld as make cmake nvcc clang; do
    if [ -e "$mnt/usr/bin/$f" ] || [ -e "$mnt/usr/local/bin/$f" ]; then echo "$f"; fi
  done
  compgen -G "$mnt/usr/lib/gcc/*/*/cc1*" >/dev/null && echo "cc1"
  return 0
}

image_size() { buildah_ images --format '{{.Size}}' "$1"; }

# Everything buildah made: containers, images, storage (the servers it ran are killed by root folder first).
cleanup_buildah() {
  [ -n "$QS_BUILDAH_DIR" ] && [ -d "$QS_BUILDAH_DIR" ] || return 0
  kill_processes_under "$QS_BUILDAH_DIR"
  buildah_ umount -a >/dev/null 2>&1 || true
  buildah_ rm -a >/dev/null 2>&1 || true
  buildah_ rmi -a -f >/dev/null 2>&1 || true
}
