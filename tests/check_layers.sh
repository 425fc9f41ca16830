#!/bin/sh
# tests/check_layers.sh - layers point down: util <- config <- affinity <-
# services <- shards <- engine.  Fails, naming file:line, on any
# #include "LAYER/..." of a layer above the including file's own.
# tests/ and bench/ sit on top and may include anything.
cd "$(dirname "$0")/.." || exit 2
rank() {
	case "$1" in
	util) echo 0 ;; config) echo 1 ;; affinity) echo 2 ;;
	services) echo 3 ;; shards) echo 4 ;; engine) echo 5 ;;
	*) echo 9 ;;
	esac
}
bad=0 files=0
for f in util/*.[ch] config/*.[ch] affinity/*.[ch] services/*.[ch] \
	 shards/*.[ch] engine/*.[ch]; do
	[ -f "$f" ] || continue
	files=$((files + 1))
	own=$(rank "${f%%/*}")
	grep -n '^#include "[a-z]*/' "$f" | while IFS= read -r hit; do
		line=${hit%%:*}
		target=$(printf '%s' "$hit" | sed 's/.*#include "\([a-z]*\)\/.*/\1/')
		if [ "$(rank "$target")" -gt "$own" ]; then
			echo "$f:$line: error: includes $target/ from ${f%%/*}/, a layer below it"
			echo x
		fi
	done | { out=$(cat); [ -z "$out" ] || { printf '%s\n' "$out" | grep -v '^x$'; exit 1; }; } || bad=1
done
# The management plane's libraries (HTTP server and client, JSON) belong
# to engine/ alone: nothing below it speaks HTTP or JSON.
for f in util/*.[ch] config/*.[ch] affinity/*.[ch] services/*.[ch] shards/*.[ch]; do
	[ -f "$f" ] || continue
	grep -n '^#include <\(microhttpd\|jansson\|curl/curl\)\.h>' "$f" | while IFS= read -r hit; do
		echo "$f:${hit%%:*}: error: ${hit#*:} outside engine/ (the management plane's)"
	done | { out=$(cat); [ -z "$out" ] || { printf '%s\n' "$out"; exit 1; }; } || bad=1
done
if [ "$bad" -ne 0 ]; then
	echo "check-layers: includes point up (util <- config <- affinity <- services <- shards <- engine)"
	exit 1
fi
echo "check-layers: $files files, every include points down"
