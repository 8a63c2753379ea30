#!/usr/bin/env bash
# Install the services planflow runs, from Debian: Prometheus (+ promtool),
# Alertmanager (+ amtool), the Pushgateway, and PostgreSQL (the scale-out server's
# database: `planflow server up --db postgres`), HAProxy (`planflow serve --replicas N`)
# and wrk (the serving benchmark's load). Idempotent: installs only what is
# missing; starts nothing (planflow runs the binaries itself: `planflow stack up`).
set -euo pipefail

need=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
{ command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; } \
  && command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v prometheus-pushgateway >/dev/null || command -v pushgateway >/dev/null \
  || need+=(prometheus-pushgateway)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
  || need+=(postgresql)
# planflow serve --replicas N: the load balancer; the serving benchmark's load generator
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)

if [ ${#need[@]} -eq 0 ]; then
  echo "services: already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "run as root or install sudo: apt-get install -y ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "services: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
