#!/bin/sh
# Make sure a system program the server or its tests need is installed.
# Usage: system-deps.sh mosquitto|chromium|redis|npm
set -eu
what=$1
case "$what" in
  mosquitto) binary=mosquitto; package=mosquitto; why="the embedded MQTT broker" ;;
  chromium) binary=chromium; package=chromium; why="the browser tests" ;;
  redis) binary=redis-server; package=redis-server; why="the multi-process signaling tests" ;;
  npm) binary=npm; package=npm; why="installing the browser libraries (static/vendor)" ;;
  *) echo "system-deps.sh: unknown dependency $what" >&2; exit 2 ;;
esac
if command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || [ -x "/usr/bin/$binary" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing $package ($why) with apt-get..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  # Debian starts a system mosquitto on 1883; the server runs its own on another port.
  exit 0
fi
cat >&2 <<MSG
$package is missing: it is needed for $why.
Install it, then run make again:
  Debian/Ubuntu:  sudo apt-get install $package
  Fedora:         sudo dnf install $package
  macOS:          brew install $package
MSG
exit 1
