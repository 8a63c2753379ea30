#!/usr/bin/env bash
# Build the planflow image without any container registry.
#
#   1. planflow-base:bookworm  a minimal Debian bookworm (python3, venv, CA certificates)
#                              made with debootstrap and `docker import`; built once and
#                              reused (delete it, or set REBUILD_BASE=1, to rebuild).
#   2. planflow:dev (+ planflow:<version>)  deployments/Dockerfile on that base: planflow
#                              installed from src/, the project in /opt/planflow, its pinned dependencies in
#                              /opt/venv (resolved inside the image: Debian's Python 3.11.2).
#
# Usage: scripts/build-image.sh [TAG]       (default planflow:dev; also tags the version)
# Env:   BASE_IMAGE, DEBIAN_MIRROR, REBUILD_BASE=1, DOCKER_BUILD_ARGS (extra flags)
# With a registry, build and push your own tag instead (see README, "Docker image").
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG="${1:-planflow:dev}"
BASE_IMAGE="${BASE_IMAGE:-planflow-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

command -v docker >/dev/null || { echo "docker client missing. Fix: scripts/install-docker.sh" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine does not answer. Fix: scripts/install-docker.sh" >&2; exit 1; }

start=$(date +%s)

# -- 1. the base image ------------------------------------------------------------
if [ "${REBUILD_BASE:-0}" = "1" ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "debootstrap missing. Fix: scripts/install-docker.sh" >&2; exit 1; }
  rootfs="$(mktemp -d /tmp/planflow-rootfs.XXXXXX)"
  trap 'for m in dev/pts proc sys; do mountpoint -q "$rootfs/$m" && umount -l "$rootfs/$m"; done; rm -rf --one-file-system "$rootfs"' EXIT
  echo "base: debootstrap bookworm into $rootfs (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  # debootstrap mounts /proc and /sys inside the tree; never archive or delete through them.
  for m in dev/pts proc sys; do mountpoint -q "$rootfs/$m" && umount -l "$rootfs/$m" || true; done
  # Keep the image small: no apt lists or caches.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --one-file-system -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$rootfs"; trap - EXIT
  echo "base: $BASE_IMAGE built in $(( $(date +%s) - start )) s"
else
  echo "base: reusing $BASE_IMAGE"
fi

# -- 2. the project image ---------------------------------------------------------
VERSION="$(cd "$ROOT" && python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
context="$(mktemp -d /tmp/planflow-context.XXXXXX)"
trap 'rm -rf "$context"' EXIT
# Only what the image needs: no .venv, no state folder, no caches.
(cd "$ROOT" && tar -c --exclude='__pycache__' --exclude='*.pyc' \
   pyproject.toml constraints.txt README.md src deployments flows \
   $(for d in blocks monitoring pipelines; do [ -d "$d" ] && echo "$d"; done)) \
  | tar -C "$context" -x
cp "$CA_BUNDLE" "$context/ca-certificates.crt"

echo "image: building $TAG (and planflow:$VERSION) from deployments/Dockerfile"
DOCKER_BUILDKIT=0 docker build --network host \
  --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -f "$context/deployments/Dockerfile" -t "$TAG" -t "planflow:$VERSION" \
  ${DOCKER_BUILD_ARGS:-} "$context" 2>&1 \
  | { grep -v -e '^DEPRECATED' -e 'legacy builder' -e 'BuildKit' -e 'docs.docker.com/go/buildx' || true; }
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "image: build of $TAG failed (see above)" >&2; exit 1; }
echo "image: $TAG ready in $(( $(date +%s) - start )) s total"
