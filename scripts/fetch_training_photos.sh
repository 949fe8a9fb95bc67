#!/usr/bin/env bash
# Fetch the Debian lomiri-wallpapers-16.04 photos (training / held-out data of the default
# model) into $ONESTEP_SR_CACHE/photos (default ~/.cache/onestep-sr/photos), outside the
# repository. Needs only `apt-get download` and `dpkg -x`: nothing is installed system-wide.
# Idempotent: does nothing when the photos are already unpacked.
set -euo pipefail
PACKAGE=lomiri-wallpapers-16.04
CACHE="${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}/photos"
if [ -d "$CACHE/extracted/usr/share/backgrounds" ]; then
    echo "photos already in $CACHE/extracted/usr/share/backgrounds"
    exit 0
fi
mkdir -p "$CACHE/debs"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
# A fresh machine may have no package lists yet: refresh them once and retry.
( cd "$CACHE/debs" && { apt-get download "$PACKAGE" || { $sudo apt-get update -q && apt-get download "$PACKAGE"; }; } )
dpkg -x "$CACHE"/debs/"$PACKAGE"_*.deb "$CACHE/extracted.tmp"
mv "$CACHE/extracted.tmp" "$CACHE/extracted"
echo "photos in $CACHE/extracted/usr/share/backgrounds"
