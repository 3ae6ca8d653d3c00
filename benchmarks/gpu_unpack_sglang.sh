#!/usr/bin/env bash
# On the GPU machine: unpack SGLang's bundle, gathered in /tmp/sb, into /tmp/ssite, once. Under a lock, so that a
# run that starts while an unpack (say one a poll started) is under way waits for it instead of unpacking again.
# Nothing happens before the first chunk has arrived; a chunk still missing leaves tar failing and no /tmp/ssite.
set -euo pipefail
exec 9>/tmp/sb.lock
flock 9
if [ -e /tmp/sb/sb.00 ] && [ ! -d /tmp/ssite/sglang ]; then
  rm -rf /tmp/ssite.part && mkdir -p /tmp/ssite.part
  if cat /tmp/sb/sb.* | tar xzf - -C /tmp/ssite.part; then
    mv /tmp/ssite.part /tmp/ssite && echo "unpacked SGLang: $(ls /tmp/sb)"
  else
    echo "SGLang's bundle in /tmp/sb is incomplete ($(ls /tmp/sb)): not unpacked" >&2
  fi
fi
