#!/bin/sh
# Fetch the pinned kernel package, check its SHA-256, and install only the
# kernel image: the boot archive is an initramfs and the serial console
# driver is built in, so no modules are needed.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
. ./kernel.pin

# Downloads are cached outside the proto area and checked on every use.
cache=${PIB_CACHE:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/pib/downloads}
deb=$cache/$DEB
verify() {
	[ -f "$deb" ] && printf '%s  %s\n' "$SHA256" "$deb" | sha256sum --quiet -c -
}
if ! verify 2>/dev/null; then
	mkdir -p "$cache"
	tmp=$(mktemp -d "$cache/.$PACKAGE.XXXXXX")
	(cd "$tmp" && apt-get download -qq "$PACKAGE=$VERSION") || {
		rm -rf "$tmp"
		echo "build.sh: cannot download $PACKAGE $VERSION (is it still in the archive? pin a current one in kernel.pin)" >&2
		exit 1
	}
	mv "$tmp/$DEB" "$deb"
	rm -rf "$tmp"
	verify || {
		echo "build.sh: $DEB does not match the SHA-256 pinned in kernel.pin" >&2
		rm -f "$deb"
		exit 1
	}
fi

# Only the kernel image leaves the package (the modules are ~400 MB).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
install -d "$DESTDIR/boot"
install -m 0644 "$work"/boot/vmlinuz-* "$DESTDIR/boot/vmlinuz"
