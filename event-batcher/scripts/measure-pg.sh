#!/bin/bash
# event-batcher into PostgreSQL against COPY, measured in the same run.
#
# For each concurrency level given (default: 1 2 4), $EVENTS synthetic events (--rate 0) are
# written by the release binary into a fresh table; then $EVENTS rows of the same shape (same
# id format, tenants, payload JSON, run_id/batch_seq/claimed) are loaded by one
# `\copy … FROM file` into a fresh table of the same schema (primary key and index included;
# the file is generated beforehand, untimed). Each time is the wall time of the whole command
# (event-batcher: connect, write, consistency check; COPY: psql start to end). Every run's
# exit code and consistency check are checked, its peak RSS reported. With REPEAT=n the whole
# round is repeated n times and the medians are printed as well.
#
# `--concurrency N` is passed only when the binary has it (`--help`); without it, each level
# is the same single-writer run (the lines say so).
#
# Usage (from the workspace root): cargo build --release -p event-batcher &&
#   event-batcher/scripts/measure-pg.sh [LEVEL...]
# Environment: PG (postgres://postgres@127.0.0.1:5432/test), EVENTS (1000000), REPEAT (1),
#   B (the binary: $CARGO_TARGET_DIR or target, /release/event-batcher), ARGS (extra flags for
#   every event-batcher run, e.g. "--max-batch 2000"). Needs psql, awk, GNU time.
set -u
B=${B:-${CARGO_TARGET_DIR:-target}/release/event-batcher}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
EVENTS=${EVENTS:-1000000}
REPEAT=${REPEAT:-1}
ARGS=${ARGS:-}
LEVELS=("$@")
[ ${#LEVELS[@]} -eq 0 ] && LEVELS=(1 2 4)
TIME=/usr/bin/time
[ -x "$B" ] || { echo "no binary at $B (cargo build --release -p event-batcher)" >&2; exit 2; }
[ -x "$TIME" ] || { echo "needs GNU time at $TIME" >&2; exit 2; }
has_concurrency=no
"$B" --help | grep -q -- '--concurrency' && has_concurrency=yes

tag=mpg_$$
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$PG" -qAtc "select format(\$\$drop table if exists %I\$\$, tablename) from pg_tables where tablename like \$\$${tag}_%\$\$" 2>/dev/null | psql "$PG" -q >/dev/null 2>&1' EXIT

# The COPY input: the synthetic source's shape (ids evt-42-NNNNNNNNNN, 8 tenants, payload
# {"amount":…,"kind":…,"seq":n} as serde_json writes it, batches of 500).
awk -v n="$EVENTS" 'BEGIN {
  split("acme globex initech umbrella hooli stark wayne tyrell", T, " ");
  split("click view purchase signup", K, " ");
  srand(42); ts = 1764550000000;
  for (i = 1; i <= n; i++)
    printf "evt-42-%010d\t%s\t%d\t{\"amount\":%d,\"kind\":\"%s\",\"seq\":%d}\t1\t%d\t0\n",
      i, T[int(rand() * 8) + 1], ts + i, int(rand() * 10000), K[int(rand() * 4) + 1], i, int((i - 1) / 500) + 1
}' > "$work/rows.tsv"

ddl() {
  echo "CREATE TABLE $1 (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, ts BIGINT NOT NULL, \
payload TEXT NOT NULL, run_id BIGINT NOT NULL, batch_seq BIGINT NOT NULL, \
claimed SMALLINT NOT NULL DEFAULT 0); CREATE INDEX ${1}_run_batch ON $1 (run_id, batch_seq);"
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $EVENTS events; concurrency flag: $has_concurrency; ARGS: ${ARGS:-none}"
declare -A times
for round in $(seq 1 "$REPEAT"); do
  for level in "${LEVELS[@]}"; do
    table=${tag}_c${level}_r$round
    flag=()
    [ $has_concurrency = yes ] && flag=(--concurrency "$level")
    # shellcheck disable=SC2086
    $TIME -f '%e %M' -o "$work/time" "$B" --database "$PG" --table "$table" --events "$EVENTS" \
      --rate 0 -q "${flag[@]}" $ARGS > "$work/out" 2>&1
    code=$?
    read -r wall rss < "$work/time"
    check=$(grep -c 'consistency check    OK' "$work/out")
    rows=$(psql "$PG" -qAtc "select count(*) from $table")
    echo "round $round  event-batcher concurrency=$level$([ $has_concurrency = no ] && echo ' (flag not supported: 1 writer)')  ${wall} s  $(awk -v e="$EVENTS" -v w="$wall" 'BEGIN { printf "%.0f", e / w }') events/s  peak RSS $((rss / 1024)) MB  exit $code  check $([ "$check" = 1 ] && echo OK || echo FAILED)  rows $rows"
    [ "$code" = 0 ] && [ "$check" = 1 ] && [ "$rows" = "$EVENTS" ] || { cat "$work/out"; exit 1; }
    times[c$level]+="$wall "
    psql "$PG" -qc "DROP TABLE $table"
  done
  table=${tag}_copy_r$round
  psql "$PG" -qc "$(ddl "$table")"
  $TIME -f '%e' -o "$work/time" psql "$PG" -qc "\\copy $table FROM '$work/rows.tsv'" || exit 1
  wall=$(cat "$work/time")
  echo "round $round  COPY                       ${wall} s  $(awk -v e="$EVENTS" -v w="$wall" 'BEGIN { printf "%.0f", e / w }') rows/s  rows $(psql "$PG" -qAtc "select count(*) from $table")"
  times[copy]+="$wall "
  psql "$PG" -qc "DROP TABLE $table"
done

copy=$(echo "${times[copy]}" | tr ' ' '\n' | grep . | median)
best=
echo "medians over $REPEAT round(s) (load average now: $(cut -d' ' -f1-3 /proc/loadavg)):"
for level in "${LEVELS[@]}"; do
  t=$(echo "${times[c$level]}" | tr ' ' '\n' | grep . | median)
  echo "  event-batcher concurrency=$level  $t s  ratio to COPY $(awk -v a="$t" -v b="$copy" 'BEGIN { printf "%.2f", a / b }')x"
  if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
done
echo "  COPY                       $copy s"
echo "best/COPY = $(awk -v a="$best" -v b="$copy" 'BEGIN { printf "%.2f", a / b }')x (target <= 2.0x)"
