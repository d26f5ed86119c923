#!/usr/bin/env bash
# Debian packages the tests drive as real programs, installed when absent:
#
#   chromium     the headless browser of the dashboard's browser test (Playwright's own browser
#                download does not work everywhere; Debian's chromium does)
#   prometheus   a real Prometheus scraping `reconcile serve`, and promtool for the alert rules' tests
#
#   scripts/debs.sh          install what is missing (needs root or sudo; runs apt-get update once)
#   scripts/debs.sh check    exit 1, naming what is missing, without installing
#
# Packages install with --no-install-recommends and no service is started: the tests start their
# own Prometheus on a free loopback port (Debian's prometheus-node-exporter stays out).
set -euo pipefail

want=(chromium:/usr/bin/chromium prometheus:/usr/bin/prometheus prometheus:/usr/bin/promtool)
missing=()
for pair in "${want[@]}"; do
  pkg=${pair%%:*} bin=${pair#*:}
  if [ ! -x "$bin" ] && [[ ! " ${missing[*]-} " =~ " $pkg " ]]; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "${1:-}" = check ]; then
  echo "debs: missing: ${missing[*]} (run scripts/debs.sh)" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "debs: need root or sudo to install ${missing[*]}" >&2; exit 2; }
  sudo=(sudo)
fi
echo "debs: installing Debian's ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
