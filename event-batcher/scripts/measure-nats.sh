#!/bin/bash
# Throughput of event-batcher on NATS JetStream -> PostgreSQL with 1, 2, 3 instances, against
# the synthetic source into the same database, measured in the same run.
# First (unless SYNTH=0) the synthetic baseline: $EVENTS synthetic events (--rate 0) into a fresh
# table, the wall time of the whole command (connect, write, consistency check).
# Then for each count n: publish $EVENTS events to a fresh stream, start n instances on one
# consumer and one table (--idle-exit 2s), and report
#   rate_excl_idle = EVENTS / (wall time until the slowest instance exited - 2 s idle tail)
#   rate_rows      = EVENTS / (time until all rows were visible, polled every 100 ms)
#   x_synthetic    = rate_excl_idle / the synthetic rate
# then drop the table and delete the stream. Needs psql, bash, bc, nats-server on 4222.
# Usage (from the workspace root): cargo build --release -p event-batcher &&
#   event-batcher/scripts/measure-nats.sh        (EVENTS=200000 COUNTS="1 2 3" by default)
# CONCURRENCY=N passes --concurrency N to every run (synthetic and NATS instances);
# EXTRA="..." adds other options to every run. B: the binary ($CARGO_TARGET_DIR or target,
# /release/event-batcher).
B=${B:-${CARGO_TARGET_DIR:-target}/release/event-batcher}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
EVENTS=${EVENTS:-200000}
EXTRA="${EXTRA:-}${CONCURRENCY:+ --concurrency $CONCURRENCY}"
delete_stream() { exec 3<>/dev/tcp/127.0.0.1/4222; printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' "$1" >&3; sleep 0.3; exec 3>&-; }
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $EVENTS events; options:${EXTRA:- none}"
synth_rate=
if [ "${SYNTH:-1}" != 0 ]; then
  table=measure_synth_$$_$RANDOM
  start=$(date +%s.%N)
  $B --database $PG --table $table --events $EVENTS --rate 0 -q $EXTRA > /tmp/$table.out 2>&1 || echo "synthetic run failed"
  end=$(date +%s.%N)
  wall=$(echo "$end - $start" | bc)
  synth_rate=$(echo "$EVENTS / $wall" | bc)
  echo "synthetic wall=${wall}s rate=$synth_rate"
  grep -E "consistency check" /tmp/$table.out | cut -c1-110
  psql $PG -qc "drop table $table"; rm -f /tmp/$table.out
fi
for n in ${COUNTS:-1 2 3}; do
  tag=m${n}_$$_$RANDOM
  stream=MEASURE_$tag; subject=measure.$tag; table=measure_$tag
  $B publish --stream $stream --subject $subject --events $EVENTS
  start=$(date +%s.%N)
  pids=()
  for i in $(seq 1 $n); do
    $B --source nats://127.0.0.1:4222 --stream $stream --subject $subject --consumer eb \
       --database $PG --table $table --idle-exit 2s -q $EXTRA > /tmp/$tag.$i.out 2>&1 &
    pids+=($!)
  done
  while :; do c=$(psql $PG -Atc "select count(*) from $table" 2>/dev/null); [ "$c" = "$EVENTS" ] && break; sleep 0.1; done
  rows_at=$(date +%s.%N)
  for p in "${pids[@]}"; do wait $p || echo "instance $p failed"; done
  end=$(date +%s.%N)
  wall=$(echo "$end - $start" | bc); rows=$(echo "$rows_at - $start" | bc)
  rate=$(echo "$EVENTS / ($wall - 2)" | bc)
  echo "instances=$n wall_slowest=${wall}s all_rows_visible=${rows}s rate_excl_idle=$rate rate_rows=$(echo "$EVENTS / $rows" | bc)${synth_rate:+ x_synthetic=$(echo "scale=2; $rate / $synth_rate" | bc)}"
  for i in $(seq 1 $n); do grep -E "events acknowledged|consistency check" /tmp/$tag.$i.out | cut -c1-110; done
  psql $PG -Atc "select count(*), count(distinct id) from $table"
  psql $PG -qc "drop table $table"; delete_stream $stream; rm -f /tmp/$tag.*.out
done
