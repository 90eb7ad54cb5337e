#!/bin/bash
# The shared library exports only qimg_* symbols (the version script's job).
set -eu
bad=$(nm -D --defined-only "$QIMG_LIB" | awk '$2 ~ /^[A-Z]$/ {print $3}' |
      sed 's/@.*//' | grep -v '^qimg_' | grep -v '^QIMG_' || true)
if [ -n "$bad" ]; then
    echo "exported symbols outside the qimg_ namespace:" >&2
    echo "$bad" >&2
    exit 1
fi
count=$(nm -D --defined-only "$QIMG_LIB" | grep -c ' T qimg_' || true)
if [ "$count" -lt 10 ]; then
    echo "expected the public API to be exported, found $count symbols" >&2
    exit 1
fi
echo "ok: $count exported symbols, all qimg_*"
