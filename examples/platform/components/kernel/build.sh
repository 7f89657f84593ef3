#!/bin/sh
# Install only the kernel image from the pinned Debian kernel package: the boot
# archive is an initramfs and the serial console driver is built in, so no
# modules are needed. pib fetched and verified the package before this script
# runs (it is a declared source of the kernel component in pib.toml); the
# build itself needs no network.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
: "${PIB_SOURCES:?PIB_SOURCES must name the fetched sources (run by pib)}"
deb=$(ls "$PIB_SOURCES"/linux-image-*.deb)

# Only the kernel image leaves the package (the modules are ~400 MB).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
install -d "$DESTDIR/boot"
install -m 0644 "$work"/boot/vmlinuz-* "$DESTDIR/boot/vmlinuz"
