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
# pib fetched and verified the upstream tarball and Debian's patches before
# this script runs (declared sources of the extra component in pib.toml).
: "${PIB_SOURCES:?PIB_SOURCES must name the fetched sources (run by pib)}"
ORIG_TARBALL=$PIB_SOURCES/busybox_1.35.0.orig.tar.bz2
DEBIAN_TARBALL=$PIB_SOURCES/busybox_1.35.0-4+deb12u1.debian.tar.xz

# A fresh tree every time: the output depends only on the pinned inputs.
work=${PIB_BUILD_DIR:-$here/.build}/busybox
rm -rf "$work"
mkdir -p "$work"
tar -xjf "$ORIG_TARBALL" -C "$work"
tar -xJf "$DEBIAN_TARBALL" -C "$work"
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
