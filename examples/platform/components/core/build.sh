#!/bin/sh
# Build the platform's own programs with the build environment's compiler
# and install them into the proto area. Objects go to a copy of src in the
# build's scratch directory: the checkout is read-only in pib's sandbox.
set -eu
: "${DESTDIR:?DESTDIR must name the proto area}"
: "${CC:?CC must come from the build environment (CBE)}"
# libpib's header and archive: the lib component's proto area (depends = ["lib"]).
: "${PIB_DEP_LIB:?PIB_DEP_LIB must name the lib component's proto area (run by pib)}"
case "$(command -v "$CC" || echo "$CC")" in
/usr/bin/* | /bin/*)
	echo "build.sh: CC=$CC is the host compiler; build inside the CBE" >&2
	exit 1
	;;
esac
obj=${PIB_BUILD_DIR:-$(pwd)/.build}/core
rm -rf "$obj"
mkdir -p "$obj"
cp -R src/. "$obj/"
make -C "$obj" CC="$CC" DESTDIR="$DESTDIR" PIB_DEP_LIB="$PIB_DEP_LIB" install
