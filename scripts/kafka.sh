#!/usr/bin/env bash
# Local Apache Kafka 4.x (KRaft, single node) for development and tests, from Maven Central.
#
#   scripts/kafka.sh start   resolve the jars (once), format storage (once), start kafka.Kafka
#   scripts/kafka.sh stop    stop the broker this script started (by its pid file)
#   scripts/kafka.sh status
#
# Kafka's download site is not always reachable; Maven Central is. scripts/kafka/pom.xml names
# the broker (org.apache.kafka:kafka_2.13) and a log4j2 binding; `mvn dependency:copy-dependencies`
# copies them to .cache/kafka/libs (Maven's own cache ~/.m2 keeps them across clones).
# The broker listens on 127.0.0.1:${KAFKA_PORT:-9092}; its controller on ${KAFKA_CONTROLLER_PORT:-9093};
# its data and logs live in ${KAFKA_HOME_DIR:-.services/kafka} (tests start a private broker this way).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
LIBS="$ROOT/.cache/kafka/libs"
HOME_DIR=${KAFKA_HOME_DIR:-"$ROOT/.services/kafka"}
DATA="$HOME_DIR/data"
PIDFILE="$HOME_DIR/kafka.pid"
CONF="$HOME_DIR/server.properties"
JAVA=${JAVA:-java}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

resolve_jars() {
  if [ ! -f "$LIBS/.resolved" ] || [ "$ROOT/scripts/kafka/pom.xml" -nt "$LIBS/.resolved" ]; then
    echo "kafka: resolving broker jars from Maven Central into $LIBS" >&2
    rm -rf "$LIBS"; mkdir -p "$LIBS"
    mvn -q -B -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS" -DincludeScope=runtime > "$ROOT/.cache/kafka/mvn.log" \
      || { cat "$ROOT/.cache/kafka/mvn.log" >&2; return 1; }
    touch "$LIBS/.resolved"
  fi
}

run_java() {
  "$JAVA" -Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
    -Dkafka.logs.file="$HOME_DIR/server.log" -Dkafka.logs.dir="$HOME_DIR" \
    -cp "$LIBS/*" "$@"
}

start() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "kafka: already running (pid $(cat "$PIDFILE"), 127.0.0.1:$PORT; reused)"; return 0
  fi
  if port_open "$PORT"; then
    echo "kafka: something already listens on 127.0.0.1:$PORT (reused, not ours to stop)"; return 0
  fi
  resolve_jars
  mkdir -p "$DATA"
  sed -e "s#@PORT@#$PORT#g" -e "s#@CONTROLLER_PORT@#$CONTROLLER_PORT#g" -e "s#@DATA@#$DATA#g" \
    "$ROOT/scripts/kafka/server.properties" > "$CONF"
  if [ ! -f "$DATA/meta.properties" ]; then
    run_java kafka.tools.StorageTool format -t "$(run_java kafka.tools.StorageTool random-uuid)" \
      -c "$CONF" >/dev/null
  fi
  # setsid: the broker outlives this shell and make; its pid is what `stop` kills.
  setsid nohup "$JAVA" -Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
    -Dkafka.logs.file="$HOME_DIR/server.log" -Dkafka.logs.dir="$HOME_DIR" \
    -cp "$LIBS/*" kafka.Kafka "$CONF" > "$HOME_DIR/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if grep -q "Kafka Server started" "$HOME_DIR/server.log" 2>/dev/null && port_open "$PORT"; then
      echo "kafka: started on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $HOME_DIR/server.log)"; return 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "kafka: the broker exited while starting; see $HOME_DIR/server.log and $HOME_DIR/stdout.log" >&2
      tail -n 20 "$HOME_DIR/stdout.log" >&2 || true
      rm -f "$PIDFILE"; return 1
    fi
    sleep 0.5
  done
  echo "kafka: not ready after 60 s; see $HOME_DIR/server.log" >&2; return 1
}

stop() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"; echo "kafka: stopped"
  else
    rm -f "$PIDFILE"; echo "kafka: not started by us, nothing to stop"
  fi
}

status() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "kafka: up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
  elif port_open "$PORT"; then echo "kafka: something else listens on 127.0.0.1:$PORT"
  else echo "kafka: down"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
