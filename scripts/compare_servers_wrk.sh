#!/bin/bash
# Served throughput of two checkouts, alternated, one server at a time, driven by wrk
# (Debian's package): 10 s at CONNECTIONS connections (32) posting one 28x28 PNG, pinned at
# 3 bits and adaptive at a 600M budget (MODES), ROUNDS rounds, with the server's CPU
# milliseconds per request (all its processes, from /proc). Loopback only. PIN_BITS sets the
# pinned width; OLD_BACKEND / NEW_BACKEND, when set, are each server's ABN_BACKEND, so one
# checkout can be compared with itself on two backends (OLD=NEW).
#   OLD=/tmp/abn-old scripts/compare_servers_wrk.sh     (OLD: a checkout of the earlier version)
#   OLD=/tmp/abn-old CONNECTIONS=1 MODES=pinned ROUNDS=3 scripts/compare_servers_wrk.sh
#   OLD=$PWD OLD_BACKEND=float NEW_BACKEND=auto PIN_BITS=4 MODES=pinned \
#       scripts/compare_servers_wrk.sh
set -euo pipefail
OLD=${OLD:?set OLD to the other checkout}
NEW=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-32}
MODES=${MODES:-pinned adaptive}
PIN_BITS=${PIN_BITS:-3}
OLD_BACKEND=${OLD_BACKEND:-}
NEW_BACKEND=${NEW_BACKEND:-}
WORK=$(mktemp -d)
"$NEW/.venv/bin/python" -c "
from abn.data import load_fashion_mnist; from PIL import Image
Image.fromarray(load_fashion_mnist('test').images[0, 0].numpy()).save('$WORK/img.png')"
cat > "$WORK/post.lua" <<LUA
local f = io.open("$WORK/img.png", "rb"); local body = f:read("*all"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "image/png"
local pin = os.getenv("PIN"); if pin and pin ~= "" then wrk.headers["X-Bit-Widths"] = pin end
local budget = os.getenv("BUDGET"); if budget and budget ~= "" then wrk.headers["X-BitOps-Budget"] = budget end
LUA
serve() { # checkout port [backend]
  (cd "$1" && export PYTHONPATH="$1" && if [ -n "${3:-}" ]; then export ABN_BACKEND="$3"; fi &&
      nohup "$NEW/.venv/bin/abn" serve --model model_store/fmnist-abn \
      --port "$2" > "$WORK/server-$2.log" 2>&1 &)
  for _ in $(seq 60); do curl -sf "localhost:$2/readyz" > /dev/null && return; sleep 1; done
  echo "server on $2 not ready" >&2; exit 1
}
server_ticks() { # CPU clock ticks so far of the server on port $1 and its workers
  local supervisor
  supervisor=$(pgrep -f "service.supervisor .*--port $1 " | head -1)
  for pid in $supervisor $(pgrep -P "$supervisor"); do
    awk '{print $14 + $15}' "/proc/$pid/stat"
  done | paste -sd+ | bc
}
for round in $(seq "$ROUNDS"); do
  for name in old new; do
    if [ "$name" = old ]; then dir=$OLD port=18500 backend=$OLD_BACKEND
    else dir=$NEW port=18501 backend=$NEW_BACKEND; fi
    serve "$dir" "$port" "$backend"
    for mode in $MODES; do
      if [ "$mode" = pinned ]; then export PIN=$PIN_BITS BUDGET=; else export PIN= BUDGET=600M; fi
      wrk -t1 -c"$CONNECTIONS" -d3s -s "$WORK/post.lua" "http://127.0.0.1:$port/classify" > /dev/null
      before=$(server_ticks "$port")
      out=$(wrk -t1 -c"$CONNECTIONS" -d10s --latency -s "$WORK/post.lua" \
          "http://127.0.0.1:$port/classify")
      after=$(server_ticks "$port")
      requests=$(awk '/requests in/ {print $1}' <<< "$out")
      cpu=$(bc <<< "scale=3; ($after - $before) * 1000 / $(getconf CLK_TCK) / $requests")
      echo "round $round $name${backend:+ ($backend)} $mode $(grep Requests/sec <<< "$out") $(grep -E '^ +(50|99)%' <<< "$out" | tr -s ' ' | tr '\n' ' ') server CPU ms/request $cpu"
    done
    pkill -f "service.supervisor .*--port $port " || true
    sleep 2
  done
done
