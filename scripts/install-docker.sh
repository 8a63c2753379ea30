#!/usr/bin/env bash
# Install the Docker engine (docker.io) and debootstrap from Debian, then start
# dockerd in the background (these machines have no systemd) and wait for its
# socket. Idempotent: installs only what is missing, starts dockerd only when the
# socket does not answer. Leaves dockerd running; its log is /var/log/dockerd.log.
set -euo pipefail

SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT=${DOCKERD_WAIT_SECONDS:-60}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "docker: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if docker info >/dev/null 2>&1; then
  echo "docker: engine already running ($SOCKET)"
  exit 0
fi

echo "docker: starting dockerd in the background (log: $LOG)"
$SUDO sh -c "nohup dockerd >>'$LOG' 2>&1 </dev/null &"
for _ in $(seq 1 "$WAIT"); do
  if [ -S "$SOCKET" ] && docker info >/dev/null 2>&1; then
    echo "docker: engine ready ($SOCKET)"
    exit 0
  fi
  sleep 1
done
echo "docker: dockerd did not answer on $SOCKET within ${WAIT}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
