#!/usr/bin/env bash
# End-to-end tests of `t2diff serve` on a tiny synthetic job (single process, TIME_GAP sessions):
# answers agree with evaluation; bad requests (bad JSON, unknown fields, unknown items, k out
# of range, an empty history, a line over the size cap) get error replies and the server keeps
# serving; several queries per request; concurrent clients while a delta is applied (no
# failed request); a delta of another base refused; stdin mode; graceful stop on SIGTERM.
#
# usage: serve_test.sh T2DIFF
set -uo pipefail
T2DIFF=$1
W=$(mktemp -d /tmp/t2d-serve.XXXXXX)
server_pid=
trap '[ -n "$server_pid" ] && kill -9 "$server_pid" 2> /dev/null; [ -z "${KEEP:-}" ] && rm -rf "$W"' EXIT
. "$(dirname "$0")/lib.sh"

cat > "$W/job.textproto" <<CFG
tables { name: "item_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "$W/data" max_seq_len: 20 session_len: 5 session_mode: TIME_GAP
  split: LAST_ITEM num_shards: 2 generator { num_users: 300 num_items: 150 mean_seq_len: 20 }
}
model { diffusion_steps: 10 time_lag_feature: true }
training { batch_size: 64 epochs: 1 log_every_steps: 100 output_dir: "$W/out" }
checkpoint { dir: "$W/ckpt" }
CFG
"$T2DIFF" generate -c "$W/job.textproto" > "$W/gen.log" 2>&1
"$T2DIFF" train -c "$W/job.textproto" --export "$W/bundle" > "$W/train1.log" 2>&1
check "train and export a bundle" test $? -eq 0
"$T2DIFF" eval -c "$W/job.textproto" --dump-ranks "$W/ranks" > "$W/eval.log" 2>&1
check "evaluate with a dump of the test samples" test $? -eq 0
"$T2DIFF" train -c "$W/job.textproto" --resume --set training.epochs=2 > "$W/train2.log" 2>&1
"$T2DIFF" export -c "$W/job.textproto" --base "$W/bundle" --out "$W/delta" --json > "$W/delta.json" 2> "$W/delta.log"
check "export --base writes a delta" test $? -eq 0
check "the delta carries only changed rows" grep -qE '"items_changed":[1-9][0-9]*,"items_total":150' "$W/delta.json"
"$T2DIFF" export -c "$W/job.textproto" --out "$W/bundle2" > /dev/null 2>&1
"$T2DIFF" export -c "$W/job.textproto" --base "$W/bundle2" --out "$W/delta_other" > /dev/null 2>&1
"$T2DIFF" export -c "$W/job.textproto" --base "$W/delta" --out "$W/delta_bad" > "$W/delta_bad.log" 2>&1
check "a delta against a delta (not a full bundle) is refused" test $? -ne 0 -a ! -e "$W/delta_bad/MANIFEST"

"$T2DIFF" serve --bundle "$W/bundle" --port 0 --no-stdin --max-request-bytes 4096 > "$W/serve.out" 2> "$W/serve.err" &
server_pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -nE 's/.*listening on 127\.0\.0\.1:([0-9]+).*/\1/p' "$W/serve.err")
  [ -n "$port" ] && break
  sleep 0.1
done
check "serve listens on 127.0.0.1 and prints the port" test -n "$port"
exec 3<> "/dev/tcp/127.0.0.1/$port"
ask() { printf '%s\n' "$1" >&3; local reply; IFS= read -r -t 30 reply <&3; printf '%s' "$reply"; }

# Agreement: the first 5 dumped samples, answered over TCP, rank their targets as evaluation did.
agree=1
for line in 1 2 3 4 5; do
  dumped=$(sed -n "${line}p" "$W/ranks.test")
  target=$(sed -E 's/^\{"target":([0-9]+),.*/\1/' <<< "$dumped")
  rank=$(sed -E 's/^\{"target":[0-9]+,"rank":([0-9]+),.*/\1/' <<< "$dumped")
  request=$(sed -E "s/^\\{\"target\":[0-9]+,\"rank\":[0-9]+,/{\"id\":$line,\"k\":150,/" <<< "$dumped")
  reply=$(ask "$request")
  pos=$(sed -E 's/.*"items":\[([0-9,]*)\].*/\1/' <<< "$reply" | tr ',' '\n' | grep -nx "$target" | cut -d: -f1)
  if [ "$pos" != "$rank" ]; then echo "sample $line target $target: eval rank $rank, serve position '$pos'"; agree=0; fi
done
check "serve ranks 5 TIME_GAP test targets where evaluation did" test $agree -eq 1

first=$(sed -n 1p "$W/ranks.test" | sed -E 's/^\{"target":[0-9]+,"rank":[0-9]+,//; s/\}$//')
check "bad JSON gets an error reply" has "$(ask '{"items": [1, 2')" '"error":"request: not valid JSON"'
check "an unknown field is named" has "$(ask '{"id":"u","items":[1],"color":"red"}')" 'color: unknown field'
check "an unknown item id is named" has "$(ask "{\"items\":[1,999999],\"times\":[1,2]}")" 'items[1] = 999999: not in the model'
check "k out of range is named" has "$(ask '{"items":[1],"times":[1],"k":0}')" 'k: 0 is outside 1..10000'
check "an empty history is refused" has "$(ask '{"items":[]}')" 'items: empty history'
check "missing times are named (the data set has timestamps)" has "$(ask '{"items":[1,2]}')" 'times: missing'
long=$(printf '{"items":[%s1]}' "$(printf '1,%.0s' $(seq 3000))")
check "a request over the size cap is refused unread" has "$(ask "$long")" 'longer than the limit of 4096 bytes'
check "info: false is refused, not a crash" has "$(ask '{"info":false}')" 'info: not true'
reply=$(ask "{\"id\":\"after\",$first}")
check "the server keeps serving after bad requests" has "$reply" '"id":"after","items":['
reply=$(ask "{\"id\":7,\"queries\":[{$first},{\"items\":[424242],\"times\":[5]}]}")
check "several queries per request: one answer, one error" \
  grep -qE '"results":\[\{"items":\[[0-9,]+\].*\},\{"error":"items\[0\] = 424242: not in the model' <<< "$reply"

# Concurrent clients while a delta is applied: every request answered, none failed.
client() {  # client N: 40 requests on its own connection, replies to $W/client.N
  exec 4<> "/dev/tcp/127.0.0.1/$port"
  for i in $(seq 40); do
    printf '%s\n' "{\"id\":$i,$first}" >&4
    IFS= read -r -t 30 reply <&4 && printf '%s\n' "$reply"
  done > "$W/client.$1"
}
for c in 1 2 3 4 5 6 7 8; do client $c & done
sleep 0.3
update=$(ask "{\"id\":\"up\",\"update\":\"$W/delta\"}")
wait $(jobs -p | grep -v "^$server_pid\$")
check "the delta is applied while 8 clients are served" has "$update" '"delta_version":"'
answered=$(cat "$W"/client.* | grep -c '"items":\[')
check "all 320 concurrent requests answered without error ($answered)" test "$answered" -eq 320
info=$(ask '{"info":true}')
check "the server now answers from the delta's step" grep -qE "\"step\":$(sed -nE 's/.*"step":([0-9]+).*/\1/p' "$W/delta.json")," <<< "$info"
check "a delta of another base is refused" has "$(ask "{\"update\":\"$W/delta_other\"}")" 'not of the bundle being served'
check "and the server keeps serving" has "$(ask "{\"id\":9,$first}")" '"id":9,"items":['
exec 3>&-

# A client that sends requests and never reads its replies must not keep the server from stopping.
# (Each request asks for 10 x 150 results, about 24 KB of reply; 600 of them fill the socket buffers.)
ten=$(for q in $(seq 10); do printf '%s{"k":150,%s}' "$([ "$q" -gt 1 ] && echo ,)" "$first"; done)
exec 5<> "/dev/tcp/127.0.0.1/$port"
( for i in $(seq 600); do printf '%s\n' "{\"id\":$i,\"queries\":[$ten]}"; done >&5 ) 2> /dev/null &
flooder=$!
sleep 3

kill -TERM "$server_pid"
stopped=0
for _ in $(seq 150); do kill -0 "$server_pid" 2> /dev/null || { stopped=1; break; }; sleep 0.1; done
kill "$flooder" 2> /dev/null
exec 5>&-
check "SIGTERM stops it within 15 s although a client reads no replies" test $stopped -eq 1
check "that client is named and closed" contains "$W/serve.err" "not reading their replies; closing them"
wait "$server_pid"
rc=$?
server_pid=
check "SIGTERM stops the server gracefully (rc $rc)" test $rc -eq 0
check "and it says what it served" contains "$W/serve.err" "serve: stopped after"

# stdin mode: one reply line per request line, in order; the end of input ends the server.
printf '%s\n' "{\"id\":1,$first}" 'nonsense' "{\"id\":3,$first}" | "$T2DIFF" serve --bundle "$W/bundle" > "$W/stdin.out" 2> /dev/null
check "stdin mode exits 0 at the end of input" test $? -eq 0
check "stdin mode answers every line in order" \
  test "$(cut -c1-12 "$W/stdin.out" | tr '\n' ' ')" = '{"id":1,"ite {"error":"re {"id":3,"ite '

# Reading the bundle from Python, as docs/serving.md shows (when Debian's python3-numpy is there).
if /usr/bin/python3 -c 'import numpy' 2> /dev/null; then
  py=$(/usr/bin/python3 "$(dirname "$0")/../../docs/read_bundle.py" "$W/bundle")
  check "docs/read_bundle.py reads the bundle with numpy" grep -qE '^\{"items": 150, "dim": [0-9]+, .*"numpy_top10": \[[0-9]+(, [0-9]+){9}\]' <<< "$py"
  if /usr/bin/python3 -c 'import faiss' 2> /dev/null; then
    numpy_top=$(sed -E 's/.*"numpy_top10": (\[[^]]*\]).*/\1/' <<< "$py")
    faiss_top=$(sed -E 's/.*"faiss_top10": (\[[^]]*\]).*/\1/' <<< "$py")
    check "and faiss reads its index: the same top 10" test "$numpy_top" = "$faiss_top"
  fi
else
  echo "SKIP: python3-numpy is not installed (docs/read_bundle.py)"
fi

echo "serve e2e: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
