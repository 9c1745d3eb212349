#!/bin/bash
# event-batcher into SQLite: $EVENTS synthetic events (--rate 0) into a fresh database file,
# $REPEAT times; prints each run's wall time (the whole command: open, write, consistency
# check, close), events/s and peak RSS, then the medians. Every run's exit code, consistency
# check and row count are checked.
#
# Usage (from the workspace root): cargo build --release -p event-batcher &&
#   event-batcher/scripts/measure-sqlite.sh
# Environment: EVENTS (1000000), REPEAT (3), B (the binary: $CARGO_TARGET_DIR or target,
#   /release/event-batcher), DIR (where the database goes: a new temporary directory),
#   ARGS (extra flags for every run). Needs sqlite3 only for the row count (skipped without).
set -u
B=${B:-${CARGO_TARGET_DIR:-target}/release/event-batcher}
EVENTS=${EVENTS:-1000000}
REPEAT=${REPEAT:-3}
ARGS=${ARGS:-}
TIME=/usr/bin/time
[ -x "$B" ] || { echo "no binary at $B (cargo build --release -p event-batcher)" >&2; exit 2; }
[ -x "$TIME" ] || { echo "needs GNU time at $TIME" >&2; exit 2; }
work=$(mktemp -d ${DIR:+-p "$DIR"})
trap 'rm -rf "$work"' EXIT
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $EVENTS events; ARGS: ${ARGS:-none}"
walls=; cpus=; rsss=
for round in $(seq 1 "$REPEAT"); do
  rm -f "$work"/events.db*
  # shellcheck disable=SC2086
  $TIME -f '%e %M %U %S' -o "$work/time" "$B" --database "sqlite://$work/events.db" --events "$EVENTS" \
    --rate 0 -q $ARGS > "$work/out" 2>&1
  code=$?
  read -r wall rss user sys < "$work/time"
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  check=$(grep -c 'consistency check    OK' "$work/out")
  rows=$(command -v sqlite3 > /dev/null && sqlite3 "$work/events.db" 'select count(*) from events' || echo "$EVENTS")
  echo "round $round  ${wall} s  cpu ${cpu} s (user $user + sys $sys)  $(awk -v e="$EVENTS" -v w="$wall" 'BEGIN { printf "%.0f", e / w }') events/s  peak RSS $((rss / 1024)) MB  exit $code  check $([ "$check" = 1 ] && echo OK || echo FAILED)  rows $rows"
  [ "$code" = 0 ] && [ "$check" = 1 ] && [ "$rows" = "$EVENTS" ] || { cat "$work/out"; exit 1; }
  walls+="$wall "; cpus+="$cpu "; rsss+="$((rss / 1024)) "
done
echo "median ${EVENTS} events: $(echo $walls | tr ' ' '\n' | median) s, cpu (user + sys) $(echo $cpus | tr ' ' '\n' | median) s, peak RSS median $(echo $rsss | tr ' ' '\n' | median) MB (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
