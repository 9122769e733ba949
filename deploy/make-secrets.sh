#!/usr/bin/env bash
# Writes the compose secrets that do not exist yet into ${CTOWER_SECRETS_DIR:-./secrets}
# (git-ignored, kept out of the image): the ClickHouse password, the coupon
# API token, the operator token and Grafana's admin password (random), and a
# webhooks.toml template for the robots of deploy/alert-routes.toml, to fill in
# before `--profile alerts`.
# An existing file is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CTOWER_SECRETS_DIR:-./secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
for name in clickhouse_password coupon_api_token operator_token grafana_admin_password; do
  if [ ! -e "$dir/$name" ]; then
    random > "$dir/$name"
    echo "wrote $dir/$name"
  fi
done
if [ ! -e "$dir/webhooks.toml" ]; then
  cat > "$dir/webhooks.toml" <<'TOML'
# robot name = its WeChat Work webhook URL (a secret: the key is the credential)
# stores = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
# logistics = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
# ops = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
TOML
  echo "wrote $dir/webhooks.toml (fill in the robots' URLs before --profile alerts)"
fi
