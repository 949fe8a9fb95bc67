#!/usr/bin/env bash
# Fetch the Debian photo packages (training / held-out data of the default model) into
# $ONESTEP_SR_CACHE/photos/<package> (default ~/.cache/onestep-sr/photos), outside the repository.
# Needs only `apt-get download` and `dpkg -x`: nothing is installed system-wide.
# Idempotent: a package already unpacked is left alone.
set -euo pipefail
PACKAGES=(lomiri-wallpapers-16.04 mate-backgrounds)
CACHE="${ONESTEP_SR_CACHE:-$HOME/.cache/onestep-sr}/photos"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
for package in "${PACKAGES[@]}"; do
    if [ -d "$CACHE/$package/usr/share/backgrounds" ]; then
        echo "$package already in $CACHE/$package"
        continue
    fi
    mkdir -p "$CACHE/debs"
    # A fresh machine may have no package lists yet: refresh them once and retry.
    ( cd "$CACHE/debs" && { apt-get download "$package" || { $sudo apt-get update -q && apt-get download "$package"; }; } )
    rm -rf "$CACHE/$package.tmp"
    dpkg -x "$CACHE"/debs/"$package"_*.deb "$CACHE/$package.tmp"
    mv "$CACHE/$package.tmp" "$CACHE/$package"
    echo "$package in $CACHE/$package"
done
