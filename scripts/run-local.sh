#!/usr/bin/env bash
# `make run`: the local exchange in the background, Redis if none answers, the daemon in the
# foreground. Ctrl-C (SIGINT) stops the daemon, which flushes SQLite; then the rest stops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p var/log var/redis

# Same precedence as the daemon: environment over .env over defaults.
if [ -f .env ]; then set -a; . ./.env; set +a; fi
REDIS_URL="${SIDECAR_REDIS_URL:-redis://127.0.0.1:6379/0}"
EXCHANGE_PORT="${SIDECAR_EXCHANGE_PORT:-8700}"
export SIDECAR_YAHOO_BASE_URL="${SIDECAR_YAHOO_BASE_URL:-http://127.0.0.1:${EXCHANGE_PORT}}"
# The exchange also plays Twelve Data, Polygon and Alpha Vantage, and accepts the key "local":
# the fallbacks are live out of the box (each at its free plan's budget).
for p in TWELVEDATA POLYGON ALPHAVANTAGE; do
  url="SIDECAR_${p}_BASE_URL" key="SIDECAR_${p}_API_KEY"
  export "$url=${!url:-http://127.0.0.1:${EXCHANGE_PORT}}" "$key=${!key-local}"
done

started_redis=""  # the pid of a redis-server this script started, stopped again on the way out
cleanup() {
  if [ -n "${exchange_pid:-}" ]; then kill "$exchange_pid" 2>/dev/null || true; wait "$exchange_pid" 2>/dev/null || true; fi
  if [ -n "$started_redis" ]; then
    kill "$started_redis" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$started_redis" 2>/dev/null || break; sleep 0.1; done
    echo "stopped the redis-server this script started (pid $started_redis)"
  fi
}
trap cleanup EXIT

redis_up() { "$PY" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()' "$REDIS_URL" >/dev/null 2>&1; }

if ! redis_up; then
  case "$REDIS_URL" in
    redis://127.0.0.1:*|redis://localhost:*)
      port=$(echo "$REDIS_URL" | sed -E 's#redis://[^:]+:([0-9]+).*#\1#')
      echo "starting redis-server on 127.0.0.1:${port} (data in var/redis)"
      redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$PWD/var/redis" \
        --logfile "$PWD/var/log/redis.log" --pidfile "$PWD/var/redis/redis.pid" --save "" --appendonly no
      for _ in $(seq 50); do redis_up && break; sleep 0.1; done
      started_redis=$(cat "$PWD/var/redis/redis.pid") ;;
    *) echo "Redis at $REDIS_URL does not answer; start it or set SIDECAR_REDIS_URL" >&2; exit 1 ;;
  esac
fi

"$PY" -u -m sidecar.exchange --always-open --port "$EXCHANGE_PORT" >var/log/exchange.log 2>&1 &
exchange_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:${EXCHANGE_PORT}/_exchange/stats" >/dev/null 2>&1 && break
  kill -0 "$exchange_pid" 2>/dev/null || { cat var/log/exchange.log >&2; exit 1; }
  sleep 0.1
done
echo "local exchange on http://127.0.0.1:${EXCHANGE_PORT} (log: var/log/exchange.log)"
echo "sidecar health: curl 127.0.0.1:${SIDECAR_HTTP_PORT:-8787}/health   (Ctrl-C stops)"

# Not exec: the trap must run after the daemon exits. The daemon handles SIGINT/SIGTERM itself.
"$PY" -u -m sidecar run "$@" &
daemon_pid=$!
trap 'kill -INT "$daemon_pid" 2>/dev/null || true' INT TERM
status=0
wait "$daemon_pid" || status=$?
if kill -0 "$daemon_pid" 2>/dev/null; then wait "$daemon_pid" || status=$?; fi
exit "$status"
