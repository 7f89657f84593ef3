#!/bin/sh
# Third-party software the illumos-extra way: the pinned upstream tarball,
# the distribution's patches applied in series order, built with the build
# environment's compiler and installed into the proto area.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
: "${CC:?CC must come from the build environment (CBE)}"
case "$(command -v "$CC" || echo "$CC")" in
/usr/bin/* | /bin/*)
	echo "build.sh: CC=$CC is the host compiler; build inside the CBE" >&2
	exit 1
	;;
esac
here=$(pwd)
. ./busybox.pin

# Downloads are cached outside the proto area and checked on every use.
cache=${PIB_CACHE:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/pib/downloads}
cache=$cache/$SRC_PACKAGE-$(echo "$SRC_VERSION" | tr ':' '_')
verify() {
	[ -f "$cache/$ORIG_TARBALL" ] && [ -f "$cache/$DEBIAN_TARBALL" ] &&
		printf '%s  %s\n%s  %s\n' "$ORIG_SHA256" "$cache/$ORIG_TARBALL" \
			"$DEBIAN_SHA256" "$cache/$DEBIAN_TARBALL" | sha256sum --quiet -c -
}
if ! verify 2>/dev/null; then
	mkdir -p "$(dirname "$cache")"
	tmp=$(mktemp -d "$cache.tmp.XXXXXX")
	(cd "$tmp" && apt-get source --download-only -qq "$SRC_PACKAGE=$SRC_VERSION") || {
		rm -rf "$tmp"
		echo "build.sh: cannot download $SRC_PACKAGE $SRC_VERSION;" \
			"a deb-src line for Debian 12 is needed (see the example's setup-host script)" >&2
		exit 1
	}
	rm -rf "$cache"
	mv "$tmp" "$cache"
	verify || {
		echo "build.sh: $SRC_PACKAGE $SRC_VERSION does not match the SHA-256 pinned in busybox.pin" >&2
		exit 1
	}
fi

# A fresh tree every time: the output depends only on the pinned inputs.
work=${PIB_BUILD_DIR:-$here/.build}/busybox
rm -rf "$work"
mkdir -p "$work"
tar -xjf "$cache/$ORIG_TARBALL" -C "$work"
tar -xJf "$cache/$DEBIAN_TARBALL" -C "$work"
src=$work/busybox-1.35.0
mv "$work/debian" "$src/debian"
cd "$src"
grep -v '^[[:space:]]*\(#\|$\)' debian/patches/series | while read -r p; do
	echo "applying debian/patches/$p"
	patch -p1 --forward --batch --quiet <"debian/patches/$p"
done
for p in "$here"/patches/*.patch; do
	[ -f "$p" ] || continue
	echo "applying $(basename "$p")"
	patch -p1 --forward --batch --quiet <"$p"
done

# Binutils come from PATH, where the CBE's bin comes first; pass any it names.
set -- CC="$CC" HOSTCC="$CC"
for tool in AR NM STRIP OBJCOPY OBJDUMP; do
	eval "val=\${$tool:-}"
	[ -z "$val" ] || set -- "$@" "$tool=$val"
done
make -s "$@" defconfig
# Static, so the boot archive needs no C library.
sed -i -e 's/^# CONFIG_STATIC is not set$/CONFIG_STATIC=y/' .config
grep -q '^CONFIG_STATIC=y$' .config
make -s "$@" busybox
install -d "$DESTDIR/bin"
install -m 0755 busybox "$DESTDIR/bin/busybox"
rm -rf "$work"
