#!/bin/sh
# The platform's own library: its header and a static archive, installed into
# the proto area for the components that build against it (core). Nothing of
# it is shipped in the boot archive, so it has no manifest: the programs that
# use it link it in statically.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
: "${CC:?CC must come from the build environment (CBE)}"
case "$(command -v "$CC" || echo "$CC")" in
/usr/bin/* | /bin/*)
	echo "build.sh: CC=$CC is the host compiler; build inside the CBE" >&2
	exit 1
	;;
esac
obj=${PIB_BUILD_DIR:-$(pwd)/.build}/lib
rm -rf "$obj"
mkdir -p "$obj"
cp -R src/. "$obj/"
make -C "$obj" CC="$CC" DESTDIR="$DESTDIR" install
