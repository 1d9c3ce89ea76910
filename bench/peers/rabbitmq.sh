#!/usr/bin/env bash
# RabbitMQ for the benchmark: the machine's broker on 127.0.0.1:5672
# (guest/guest), started here only if it is not running. The durability
# settings are per queue and per message, so the load generator sets them: a
# durable quorum queue (its Raft log is fsynced before confirms), persistent
# messages, publisher confirms awaited, manual acks.
source "$(dirname "$0")/lib.sh"
PORT=${CHERGA_BENCH_RABBITMQ_PORT:-5672}

ctl() {
    timeout 60 rabbitmqctl -q "$@"
}

case "${1:-}" in
start)
    if ! command -v rabbitmqctl > /dev/null; then
        skip rabbitmq "RabbitMQ is not installed (apt-get install rabbitmq-server)"
        exit 0
    fi
    if ! ctl status > /dev/null 2>&1; then
        echo "rabbitmq: not running; starting rabbitmq-server -detached" >&2
        rabbitmq-server -detached > /dev/null 2>&1 || true
        touch "$STATE/rabbitmq.started-here"
        if ! ctl await_startup > /dev/null 2>&1; then
            skip rabbitmq "rabbitmq-server did not start"
            exit 0
        fi
    fi
    if ! wait_port 127.0.0.1 "$PORT" 50; then
        skip rabbitmq "nothing listens on 127.0.0.1:$PORT"
        exit 0
    fi
    pid=$(ctl eval 'os:getpid().' 2>/dev/null | tr -d '"')
    write_peer rabbitmq "url=amqp://guest:guest@127.0.0.1:$PORT/%2f" "pid=$pid" \
        "version=$(ctl version 2>/dev/null)" \
        "settings=durable quorum queue, persistent messages (delivery mode 2), publisher confirms awaited, manual acks (multiple for a batch), prefetch = batch size"
    ;;
stop)
    # The machine's broker is left running unless this script started it.
    if [ -f "$STATE/rabbitmq.started-here" ]; then
        ctl stop > /dev/null 2>&1 || true
        rm -f "$STATE/rabbitmq.started-here"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
