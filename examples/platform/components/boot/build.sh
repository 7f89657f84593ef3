#!/bin/sh
# The boot loader, the way SmartOS delivers proto.boot: GRUB's BIOS (i386-pc)
# and UEFI (x86_64-efi) images and modules from two pinned Debian 12 packages,
# unpacked into the proto area. `pib media` makes the ISO and USB images from
# them; nothing of this goes into the boot archive. pib fetched and verified
# the packages before this script runs (declared sources of the boot
# component in pib.toml); the build itself needs no network.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
: "${PIB_SOURCES:?PIB_SOURCES must name the fetched sources (run by pib)}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for deb in "$PIB_SOURCES"/grub-pc-bin_*.deb "$PIB_SOURCES"/grub-efi-amd64-bin_*.deb; do
	dpkg-deb -x "$deb" "$work"
done
for platform in i386-pc x86_64-efi; do
	test -f "$work/usr/lib/grub/$platform/kernel.img"
	install -d "$DESTDIR/usr/lib/grub"
	cp -pR "$work/usr/lib/grub/$platform" "$DESTDIR/usr/lib/grub/"
done
