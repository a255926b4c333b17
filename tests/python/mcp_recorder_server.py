"""A scripted stdio peer for the relay tests: not an MCP server, a recorder.

Every line it reads on stdin is appended, byte for byte, to the file given
as the first argument. The second argument is a JSON file mapping a method
name to the lines to write to stdout when a message with that method
arrives ("$ID" in a line is replaced by the message's id). A message with
method "exit" makes it exit with the code in its params.
"""

import json
import sys

log = open(sys.argv[1], "ab", buffering=0)
script = json.load(open(sys.argv[2]))
for raw in sys.stdin.buffer:
    log.write(raw)
    try:
        msg = json.loads(raw)
    except ValueError:
        continue
    method = msg.get("method") if isinstance(msg, dict) else None
    if method == "exit":
        sys.exit(msg["params"]["code"])
    for line in script.get(method or "", []):
        sys.stdout.write(line.replace("$ID", json.dumps(msg.get("id"))) + "\n")
        sys.stdout.flush()
