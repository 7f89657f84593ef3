#!/bin/sh
# Build the platform's own programs with the build environment's compiler
# and install them into the proto area.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
: "${CC:?CC must come from the build environment (CBE)}"
case "$(command -v "$CC" || echo "$CC")" in
/usr/bin/* | /bin/*)
	echo "build.sh: CC=$CC is the host compiler; build inside the CBE" >&2
	exit 1
	;;
esac
make -C src clean
make -C src CC="$CC" DESTDIR="$DESTDIR" install
