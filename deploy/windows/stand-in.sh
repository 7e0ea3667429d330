#!/usr/bin/env bash
# Builds the bcryptprimitives.dll stand-in (ProcessPrng over RtlGenRandom,
# for Wine 8) into the directory given: deploy/windows/stand-in.sh DIR
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: stand-in.sh DIR}
printf 'LIBRARY bcryptprimitives\nEXPORTS\nProcessPrng\n' > "$OUT/bcryptprimitives.def"
x86_64-w64-mingw32-gcc -shared -o "$OUT/bcryptprimitives.dll" \
  "$HERE/bcryptprimitives.c" "$OUT/bcryptprimitives.def" -ladvapi32
