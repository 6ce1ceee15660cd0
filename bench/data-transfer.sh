#!/usr/bin/env bash
# Upload and download throughput of a task's data transfers (osmo_runtime::data, as the
# runtime moves URL inputs and outputs) against an S3-compatible server (s3s-fs, started by
# scripts/with-s3.sh), with two plain clients on the same file and server in the same run as
# baselines: curl --aws-sigv4 (one PUT, one GET) and boto3's upload_file/download_file
# (multipart, as the AWS CLI does). Prints each and the ratios (target: at least 0.8).
#
#   bench/data-transfer.sh            # 1 GiB
#   SIZE_MB=256 bench/data-transfer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OSMO_TEST_S3_URL:-}" ]; then
    exec scripts/with-s3.sh "$0" "$@"
fi
SIZE_MB=${SIZE_MB:-1024}
cargo build --release --quiet -p osmo-runtime --example transfer
venv=$HOME/.cache/osmo/boto3-venv
if ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q 'boto3==1.*'
fi
bin=target/release/examples/transfer
work=$(mktemp -d /var/tmp/osmo-transfer.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/up" "$work/down"
head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$work/up/big.bin"
bytes=$((SIZE_MB * 1024 * 1024))
base="$OSMO_TEST_S3_URL/$OSMO_TEST_S3_BUCKET"
sign=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$OSMO_TEST_S3_KEY_ID:$OSMO_TEST_S3_SECRET"
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -s -f)
export OSMO_S3_KEY_ID=$OSMO_TEST_S3_KEY_ID OSMO_S3_SECRET=$OSMO_TEST_S3_SECRET OSMO_S3_URL=$OSMO_TEST_S3_URL

rate() { python3 -c "import sys; print(f'{$bytes / float(sys.argv[1]) / 1e6:.0f}')" "$1"; }
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); python3 -c "print($t1 - $t0)"; }

boto='
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["OSMO_TEST_S3_URL"], region_name="us-east-1",
    aws_access_key_id=os.environ["OSMO_TEST_S3_KEY_ID"], aws_secret_access_key=os.environ["OSMO_TEST_S3_SECRET"])
bucket = os.environ["OSMO_TEST_S3_BUCKET"]
if sys.argv[1] == "up": s3.upload_file(sys.argv[2], bucket, sys.argv[3])
else: s3.download_file(bucket, sys.argv[3], sys.argv[2])
'
echo "data-transfer: ${SIZE_MB} MiB, one file, $(nproc) CPUs, server s3s-fs on this machine"
for round in 1 2; do
    curl_up=$(seconds curl "${sign[@]}" -T "$work/up/big.bin" "$base/curl/$round/big.bin")
    curl_down=$(seconds curl "${sign[@]}" -o "$work/down/curl.bin" "$base/curl/$round/big.bin")
    boto_up=$(seconds "$venv/bin/python" -c "$boto" up "$work/up/big.bin" "boto/$round/big.bin")
    boto_down=$(seconds "$venv/bin/python" -c "$boto" down "$work/down/boto.bin" "boto/$round/big.bin")
    ours_up=$(seconds "$bin" upload "s3://$OSMO_TEST_S3_BUCKET/osmo/$round" "$work/up")
    rm -rf "$work/down/osmo"
    ours_down=$(seconds "$bin" download "s3://$OSMO_TEST_S3_BUCKET/osmo/$round" "$work/down/osmo")
    cmp -s "$work/up/big.bin" "$work/down/osmo/big.bin" || { echo "downloaded bytes differ" >&2; exit 1; }
    python3 - "$curl_up" "$boto_up" "$ours_up" "$curl_down" "$boto_down" "$ours_down" "$bytes" "$round" <<'PY'
import sys
cu, bu, ou, cd, bd, od, n, r = map(float, sys.argv[1:9])
mb = lambda s: n / s / 1e6
for what, c, b, o in (("upload  ", cu, bu, ou), ("download", cd, bd, od)):
    print(f"round {int(r)}: {what} curl {mb(c):5.0f} MB/s  boto3 {mb(b):5.0f} MB/s  osmo {mb(o):5.0f} MB/s"
          f"  ratio to curl {c / o:.2f}, to boto3 {b / o:.2f}")
PY
done
