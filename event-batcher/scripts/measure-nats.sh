#!/bin/bash
# Throughput and CPU cost of event-batcher on NATS JetStream -> PostgreSQL with 1, 2, 3
# instances, against the synthetic source into the same database, measured in the same run.
# First (unless SYNTH=0) the synthetic baseline: $EVENTS synthetic events (--rate 0) into a fresh
# table, the wall time of the whole command (connect, write, consistency check), and its CPU.
# Then for each count n: publish $EVENTS events ($PER_MESSAGE to a message) to a fresh stream,
# start n instances on one consumer and one table (--idle-exit 2s), and report
#   events/s      = EVENTS / (wall time until the slowest instance exited - 2 s idle tail)
#   rows/s        = EVENTS / (time until all rows were visible, polled every 100 ms)
#   x_synthetic   = events/s / the synthetic rate (same --concurrency)
#   cpu_instances = user+system CPU seconds of all instances per 100,000 events
#   cpu_nats      = user+system CPU seconds of nats-server per 100,000 events, from its
#                   /proc/PID/stat before the instances start and after they exit (the
#                   publish is not counted), minus its background rate (sampled for 2 s
#                   just before, times the wall time), and the same in µs per event
#   nats_reads    = read calls of nats-server per 1,000 events (/proc/PID/io syscr; each
#                   wake-up by the instances costs it about two: the data, then EAGAIN)
# then drop the table and delete the stream. A table of the rates and CPU ends the output.
# Needs psql, bash, bc, /usr/bin/time, and nats-server on 4222 (its PID: NATS_PID, else the
# oldest process named nats-server), or PRIVATE_NATS=/usr/sbin/nats-server: a server of this
# run's own on a free port and a temporary store (its CPU is then this run's alone; on a
# shared server other clients' work is counted too).
# Usage (from the workspace root): cargo build --release -p event-batcher &&
#   event-batcher/scripts/measure-nats.sh     (EVENTS=200000 COUNTS="1 2 3" PER_MESSAGE=1)
# CONCURRENCY=N passes --concurrency N to every run (synthetic and NATS instances);
# EXTRA="..." adds other options to every run. B: the binary ($CARGO_TARGET_DIR or target,
# /release/event-batcher).
B=${B:-${CARGO_TARGET_DIR:-target}/release/event-batcher}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
EVENTS=${EVENTS:-200000}
PER_MESSAGE=${PER_MESSAGE:-1}
EXTRA="${EXTRA:-}${CONCURRENCY:+ --concurrency $CONCURRENCY}"
PORT=4222
if [ -n "${PRIVATE_NATS:-}" ]; then
  # A nats-server of this run's own (free port, temporary store): its CPU is ours alone.
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  store=$(mktemp -d)
  $PRIVATE_NATS -a 127.0.0.1 -p $PORT -js -sd $store > /dev/null 2>&1 &
  NATS_PID=$!
  trap 'kill $NATS_PID; wait $NATS_PID 2>/dev/null; rm -rf $store' EXIT
  until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.1; done
fi
URL=nats://127.0.0.1:$PORT
NATS_PID=${NATS_PID:-$(pgrep -o -x nats-server)}
delete_stream() { exec 3<>/dev/tcp/127.0.0.1/$PORT; printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' "$1" >&3; sleep 0.3; exec 3>&-; }
# CPU seconds (user + system) of process $1 so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
# Read calls of process $1 so far (0 when /proc/PID/io cannot be read).
reads_of() { awk '/^syscr/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }
# CPU seconds (user + system) written by /usr/bin/time -f "%U %S" to the files given.
cpu_sum() { cat "$@" | awk 'NF == 2 && $1 ~ /^[0-9.]+$/ { s += $1 + $2 } END { printf "%.2f", s }'; }
per100k() { echo "scale=2; $1 * 100000 / $EVENTS" | bc; }
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $EVENTS events, $PER_MESSAGE per message; options:${EXTRA:- none}; nats-server $URL PID ${NATS_PID:-unknown}${PRIVATE_NATS:+ (private)}"
synth_rate=
table_rows=()
if [ "${SYNTH:-1}" != 0 ]; then
  table=measure_synth_$$_$RANDOM
  start=$(date +%s.%N)
  /usr/bin/time -o /tmp/$table.cpu -f "%U %S" \
    $B --database $PG --table $table --events $EVENTS --rate 0 -q $EXTRA > /tmp/$table.out 2>&1 || echo "synthetic run failed"
  end=$(date +%s.%N)
  wall=$(echo "$end - $start" | bc)
  synth_rate=$(echo "$EVENTS / $wall" | bc)
  cpu=$(cpu_sum /tmp/$table.cpu)
  echo "synthetic wall=${wall}s rate=$synth_rate cpu=${cpu}s ($(per100k $cpu) s per 100k events)"
  grep -E "consistency check" /tmp/$table.out | cut -c1-110
  table_rows+=("| synthetic | $synth_rate | 1.00 | $(per100k $cpu) | - | - |")
  psql $PG -qc "drop table $table"; rm -f /tmp/$table.out /tmp/$table.cpu
fi
for n in ${COUNTS:-1 2 3}; do
  tag=m${n}_$$_$RANDOM
  stream=MEASURE_$tag; subject=measure.$tag; table=measure_$tag
  $B publish --source $URL --stream $stream --subject $subject --events $EVENTS \
    $([ "$PER_MESSAGE" != 1 ] && echo --events-per-message $PER_MESSAGE)
  # nats-server's own background CPU (other streams, timers), sampled for 2 s while idle.
  idle_before=$(cpu_of $NATS_PID 2>/dev/null || echo 0); sleep 2
  idle_cpu_per_s=$(echo "scale=4; ($(cpu_of $NATS_PID 2>/dev/null || echo 0) - $idle_before) / 2" | bc)
  nats_before=$(cpu_of $NATS_PID 2>/dev/null || echo 0)
  reads_before=$(reads_of $NATS_PID)
  start=$(date +%s.%N)
  pids=()
  for i in $(seq 1 $n); do
    /usr/bin/time -o /tmp/$tag.$i.cpu -f "%U %S" \
      $B --source $URL --stream $stream --subject $subject --consumer eb \
       --database $PG --table $table --idle-exit 2s -q $EXTRA > /tmp/$tag.$i.out 2>&1 &
    pids+=($!)
  done
  while :; do c=$(psql $PG -Atc "select count(*) from $table" 2>/dev/null); [ "$c" = "$EVENTS" ] && break; sleep 0.1; done
  rows_at=$(date +%s.%N)
  for p in "${pids[@]}"; do wait $p || echo "instance $p failed"; done
  end=$(date +%s.%N)
  nats_after=$(cpu_of $NATS_PID 2>/dev/null || echo 0)
  reads=$(echo "scale=1; ($(reads_of $NATS_PID) - $reads_before) * 1000 / $EVENTS" | bc)
  wall=$(echo "$end - $start" | bc); rows=$(echo "$rows_at - $start" | bc)
  rate=$(echo "$EVENTS / ($wall - 2)" | bc)
  x=${synth_rate:+$(echo "scale=2; $rate / $synth_rate" | bc)}
  cpu=$(cpu_sum /tmp/$tag.*.cpu)
  nats_raw=$(echo "$nats_after - $nats_before" | bc)
  # Minus the background rate over the same wall time (never below 0).
  nats_cpu=$(echo "x = $nats_raw - $idle_cpu_per_s * $wall; if (x < 0) x = 0; x" | bc)
  nats_us=$(echo "scale=2; $nats_cpu * 1000000 / $EVENTS" | bc)
  echo "instances=$n wall_slowest=${wall}s all_rows_visible=${rows}s rate_excl_idle=$rate rate_rows=$(echo "$EVENTS / $rows" | bc)${x:+ x_synthetic=$x} cpu_instances=$(per100k $cpu)s/100k cpu_nats=$(per100k $nats_cpu)s/100k (${nats_us} us/event; raw $(per100k $nats_raw)s/100k, idle ${idle_cpu_per_s}s/s subtracted) nats_reads=${reads}/1k"
  for i in $(seq 1 $n); do grep -E "events acknowledged|consistency check" /tmp/$tag.$i.out | cut -c1-110; done
  psql $PG -Atc "select count(*), count(distinct id) from $table"
  table_rows+=("| $n instance(s) | $rate | ${x:--} | $(per100k $cpu) | $(per100k $nats_cpu) | $nats_us |")
  psql $PG -qc "drop table $table"; delete_stream $stream; rm -f /tmp/$tag.*.out /tmp/$tag.*.cpu
done
echo
echo "$EVENTS events, $PER_MESSAGE per message, options:${EXTRA:- none}, load before: see first line"
echo "| source | events/s | x synthetic | CPU s / 100k events (event-batcher) | CPU s / 100k events (nats-server) | nats-server µs / event |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${table_rows[@]}"
