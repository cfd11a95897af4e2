# Sourced by .ci/run: clean Debian 12 roots (debootstrap) made usable the way a fresh machine on this network is,
# commands run inside them, and the teardown that leaves nothing mounted or running. Bash, set -euo pipefail.

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda-13.0}

# make_pristine_root DIR: a minimal bookworm root from Debian's packages, nothing cached between runs.
make_pristine_root() {
  local dir=$1
  mkdir -p "$dir"
  debootstrap --variant=minbase bookworm "$dir" "$DEBIAN_MIRROR"
}

# make_usable ROOT: what any fresh machine on this network has and a debootstrapped root lacks — name resolution,
# this network's CA certificates (installed into the trust store by the ca-certificates package, which the
# project's setup installs), the host's apt and pip settings. No project dependency is added here.
make_usable() {
  local root=$1
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # debootstrap writes no /etc/hosts; every installed Debian has one, and gRPC's resolver needs it for localhost.
  [ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
  mkdir -p "$root/usr/local/share/ca-certificates"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  # The mirror's own settings (e.g. snapshot Release files past their Valid-Until) are the network's, not ours.
  if [ -f /etc/apt/apt.conf.d/99artifact-registry ]; then cp /etc/apt/apt.conf.d/99artifact-registry "$root/etc/apt/apt.conf.d/"; fi
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$root/etc/pip.conf"; fi
  # A chroot has no init: package scripts must not start services (Debian's prometheus would take :9090).
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
}

# mount_root ROOT: /proc, /sys, /dev, and the host's CUDA toolkit read-only at its own path with the host's
# /usr/local links, so the CUDA backend still compiles inside. unmount_under finds them all again.
mount_root() {
  local root=$1
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"
  if [ -d "$CUDA_ROOT" ]; then
    mkdir -p "$root$CUDA_ROOT"
    mount --bind "$CUDA_ROOT" "$root$CUDA_ROOT"
    mount -o remount,bind,ro "$root$CUDA_ROOT"
    local link
    for link in cuda lib64 nvvm targets; do
      if [ -L "/usr/local/$link" ]; then ln -sfn "$(readlink "/usr/local/$link")" "$root/usr/local/$link"; fi
    done
  fi
}

# The environment a login on such a machine has: PATH with the CUDA toolkit, CUDA_HOME / LIBRARY_PATH when set,
# the host's pip settings (PIP_*), CI=true. Nothing else of the host's leaks in.
root_env() {
  local vars=(HOME=/root LANG=C.UTF-8 TERM=dumb CI=true
              PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  local name
  for name in CUDA_HOME LIBRARY_PATH $(compgen -e | grep '^PIP_' || true); do
    [ "$name" = PIP_FIND_LINKS ] && continue   # a wheel folder of this host's, not of a fresh machine
    [ -n "${!name:-}" ] && vars+=("$name=${!name}")
  done
  printf '%s\n' "${vars[@]}"
}

# in_root ROOT COMMAND: runs a bash command line inside the root, in the clone's folder.
in_root() {
  local root=$1; shift
  local env_vars
  mapfile -t env_vars < <(root_env)
  chroot "$root" /usr/bin/env -i "${env_vars[@]}" /bin/bash -c "cd /work/quantserve && $*"
}

# pids_under DIR: every process whose root directory is DIR or inside it (chroot, buildah run).
pids_under() {
  local dir=$1 pid link
  for pid in /proc/[0-9]*; do
    link=$(readlink "$pid/root" 2>/dev/null || true)
    case "$link" in "$dir"|"$dir"/*) echo "${pid#/proc/}" ;; esac
  done
  return 0
}

# kill_processes_under DIR: all of pids_under DIR (background servers, builds).
kill_processes_under() {
  local pid
  for pid in $(pids_under "$1"); do kill -KILL "$pid" 2>/dev/null || true; done
  sleep 1
}

# kill_tree PID: PID and all its descendants (a step interrupted midway: debootstrap, buildah, the build's tee).
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill -KILL "$1" 2>/dev/null || true
}

# quantserve_pids_under DIR: those of pids_under DIR that run the quantserve executable (by executable, as the
# process name may be a wrapper's).
quantserve_pids_under() {
  local pid exe
  for pid in $(pids_under "$1"); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    case "$exe" in */quantserve|*"/quantserve (deleted)") echo "$pid" ;; esac
  done
  return 0
}

# unmount_under DIR: every mount at or below DIR, deepest first; lazily if something still holds one.
unmount_under() {
  local m
  for m in $(still_mounted "$1" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

# still_mounted DIR: prints mounts left under DIR (empty when clean).
still_mounted() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts
}
