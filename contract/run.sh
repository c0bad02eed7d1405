#!/usr/bin/env bash
# Contract checks for healthd (issue 5): the one entry point.
#
#   HEALTHD_URL=http://127.0.0.1:PORT HEALTHD_TOKEN=... contract/run.sh [STAGE...]
#
# Stages, in order (default: all): lint fuzz sdk browser. lint needs no
# server; the others call the running healthd at HEALTHD_URL, which the
# caller starts (with HEALTHD_TOKEN configured under [[access.tokens]]).
#
# Optional environment:
#   HEALTHD_CHECK    a configured check name (default "disk")
#   HEALTHD_DETAILS  the server's `details` setting (default "authorized")
#   STATUS_FAILING_CHECK  a configured check that fails, which the status page
#                    must show as fail (default "broken"; the browser stage)
#   STATUS_ESTATE_URL, STATUS_ESTATE_FAILING, STATUS_ESTATE_WARNING
#                    a second healthd with many checks and a store, and its
#                    failing and warning checks in configured order (comma-
#                    separated): the browser stage drives its status page
#                    (contract/estate.mjs); without it, that part is skipped
#                    and the summary says so
#   CONTRACT_SPEC    the contract to test against (default: openapi.yaml)
#   CONTRACT_OUT     where stages write (default: target/contract; the fuzz
#                    stage's dictionary path in schemathesis.toml assumes it)
#
# Tools are pinned in contract/requirements.txt (PyPI, into the venv
# target/contract/venv) and contract/package-lock.json (npm, into
# contract/node_modules); both are reinstalled only when their pins change.
# Everything the stages write goes to target/contract/; logs/<stage>.log
# holds each stage's full output. One line per stage is printed; the script
# exits non-zero if any stage failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/contract"
# CONTRACT_OUT moves the stages' output (the gateway stage runs the browser
# stage under /ops/ with its own); the venv stays in target/contract.
OUT="${CONTRACT_OUT:-$ROOT/target/contract}"
VENV="$ROOT/target/contract/venv"
LOGS="$OUT/logs"
SPEC=$(realpath "${CONTRACT_SPEC:-$ROOT/openapi.yaml}")
ALL_STAGES=(lint fuzz sdk browser)

export HEALTHD_CHECK="${HEALTHD_CHECK:-disk}"
export HEALTHD_DETAILS="${HEALTHD_DETAILS:-authorized}"
export CONTRACT_DIR="$HERE"
# Never phone home, never prompt, never write outside target/.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

die() { echo "contract: $*" >&2; exit 2; }

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${ALL_STAGES[@]}")
for stage in "${stages[@]}"; do
  case " ${ALL_STAGES[*]} " in *" $stage "*) ;; *) die "unknown stage '$stage' (stages: ${ALL_STAGES[*]})" ;; esac
done
wants() { case " ${stages[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
needs_server=false
for stage in fuzz sdk browser; do
  if wants "$stage"; then needs_server=true; fi
done
if $needs_server; then
  [ -n "${HEALTHD_URL:-}" ] || die "HEALTHD_URL is not set (the base URL of a running healthd, e.g. http://127.0.0.1:8080)"
  [ -n "${HEALTHD_TOKEN:-}" ] || die "HEALTHD_TOKEN is not set (a bearer token the server has under [[access.tokens]])"
  HEALTHD_URL="${HEALTHD_URL%/}"
  export HEALTHD_URL HEALTHD_TOKEN
fi
[ -f "$SPEC" ] || die "no contract at $SPEC"
mkdir -p "$OUT" "$LOGS"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- setup --------------------------------------------------------------------

setup_venv() {
  local stamp="$VENV/.contract-stamp" want
  want="$(sha "$HERE/requirements.txt") $(python3 --version 2>&1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then echo "reused"; return; fi
  python3 -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --require-virtualenv -r "$HERE/requirements.txt"
  echo "$want" > "$stamp"
  echo "installed"
}

setup_npm() {
  local stamp="$HERE/node_modules/.contract-stamp" want
  want="$(sha "$HERE/package-lock.json") $(node --version)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then echo "reused"; return; fi
  # --ignore-scripts: none of the pinned packages needs an install script,
  # and playwright-core must not try to download a browser.
  (cd "$HERE" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
  echo "installed"
}

setup_chromium() {
  if [ -x /usr/bin/chromium ]; then echo "present"; return; fi
  if [ "$(id -u)" != 0 ]; then
    echo "/usr/bin/chromium is missing and this is not root: install Debian's chromium (sudo apt-get install -y chromium) and run again" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends chromium
  [ -x /usr/bin/chromium ] || { echo "apt-get installed chromium but /usr/bin/chromium is not there" >&2; return 1; }
  echo "installed"
}

# Runs one setup step with its output in logs/setup-NAME.log (whose last
# line is the result); stops the script on failure: no stage can run
# without its tools.
setup() {
  local name=$1 started rc log="$LOGS/setup-$1.log"
  started=$(now)
  set +e
  (set -e; "setup_$name") >"$log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    printf '%-8s %-4s %7s  %s\n' "setup" "FAIL" "$(since "$started")" "$name: see $log"
    tail -n 20 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
  printf '%-8s %-4s %7s  %s\n' "setup" "ok" "$(since "$started")" "$name: $(tail -n 1 "$log")"
}

# --- stages -------------------------------------------------------------------
# Each runs in a subshell with `set -e`, its output in logs/STAGE.log, and
# writes its one-line result to logs/STAGE.summary.

# Runs a command, shows its output, and keeps its last line in $last.
last=""
show() {
  local out rc=0
  out=$(mktemp)
  "$@" >"$out" 2>&1 || rc=$?
  cat "$out"
  last=$(tail -n 1 "$out")
  rm -f "$out"
  return $rc
}

stage_lint() {
  local validator=OK redocly=OK
  echo "== openapi-spec-validator $SPEC"
  "$VENV/bin/openapi-spec-validator" --validation-errors all "$SPEC" || validator=FAILED
  echo "== redocly lint (contract/redocly.yaml)"
  (cd "$HERE" && node_modules/.bin/redocly lint --config "$HERE/redocly.yaml" --lint-config error \
    --format stylish --max-problems 1000 "$SPEC") || redocly=FAILED
  local problems first
  problems=$(grep -cE '^ +[0-9]+:[0-9]+ +error ' "$LOGS/lint.log" || true)
  first=$(grep -m1 -E '^ +[0-9]+:[0-9]+ +error ' "$LOGS/lint.log" | sed -E 's/ +/ /g; s/^ //' || true)
  echo "openapi-spec-validator $validator; redocly lint (every rule, see redocly.yaml) $redocly," \
    "problems: $problems${first:+, first: line $first}" | cut -c1-300 > "$LOGS/lint.summary"
  [ $validator = OK ] && [ $redocly = OK ]
}

stage_fuzz() {
  local dir="$OUT/fuzz" rc=0
  rm -rf "$dir" && mkdir -p "$dir"
  printf '"%s"\n' "$HEALTHD_CHECK" > "$dir/check-names.dict"
  # From target/contract/fuzz, so Hypothesis' .hypothesis/ lands there too.
  (cd "$dir" && HYPOTHESIS_STORAGE_DIRECTORY="$dir/hypothesis" \
    "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" run "$SPEC" \
      --url "$HEALTHD_URL" --no-color \
      --report junit --report-junit-path "$dir/junit.xml") || rc=$?
  local cases
  cases=$(grep -A1 '^Test cases:' "$LOGS/fuzz.log" | tail -n 1 | sed 's/^ *//' || true)
  echo "${cases:-no case count} (seed and limits: contract/schemathesis.toml)" > "$LOGS/fuzz.summary"
  return $rc
}

stage_sdk() {
  local py="$OUT/python-client" ts="$OUT/ts" tsout="$OUT/ts-out"
  rm -rf "$py" "$ts" "$tsout" && mkdir -p "$py" "$ts"
  echo "== openapi-python-client generate"
  # ruff, from the venv, formats the generated code (the generator's post-hooks).
  PATH="$VENV/bin:$PATH" "$VENV/bin/openapi-python-client" generate --path "$SPEC" \
    --output-path "$py/healthd_client" --meta none --config "$HERE/openapi-python-client.yaml" \
    --fail-on-warning --overwrite
  echo "== mypy --strict contract/sdk_check.py"
  # --follow-imports=silent: the generated client's types are used, but its
  # own code is the generator's business, not this check's.
  MYPYPATH="$py" "$VENV/bin/mypy" --strict --follow-imports=silent --cache-dir "$OUT/mypy-cache" \
    --no-error-summary "$HERE/sdk_check.py"
  echo "== python contract/sdk_check.py"
  local pyline
  PYTHONPATH="$py" show "$VENV/bin/python" "$HERE/sdk_check.py"
  pyline=$last
  echo "== openapi-typescript"
  "$HERE/node_modules/.bin/openapi-typescript" "$SPEC" --output "$ts/schema.d.ts"
  echo "== tsc --noEmit --strict"
  "$HERE/node_modules/.bin/tsc" -p "$HERE/tsconfig.json" --noEmit --strict
  echo "== tsc (emit) and node"
  "$HERE/node_modules/.bin/tsc" -p "$HERE/tsconfig.json" --outDir "$tsout"
  echo '{ "type": "module" }' > "$tsout/package.json"
  show node "$tsout/sdk_check.js"
  echo "py: ${pyline#python client: } | ts: ${last#typescript client: }" > "$LOGS/sdk.summary"
}

stage_browser() {
  "$VENV/bin/python" -c 'import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), open(sys.argv[2], "w"))' \
    "$SPEC" "$OUT/openapi.json"
  rm -f "$OUT/swagger-ui.png" "$OUT/status.png" "$OUT/status-phone.png" "$OUT/status-estate.png"
  local rc=0 swagger status
  echo "== Swagger UI (contract/swagger.mjs)"
  CONTRACT_SPEC_JSON="$OUT/openapi.json" SWAGGER_SCREENSHOT="$OUT/swagger-ui.png" show node "$HERE/swagger.mjs" || rc=$?
  swagger=$last
  # The gateway stage asks for Swagger UI only: its healthd has no failing
  # check for the status page test to find.
  if [ "${CONTRACT_BROWSER_PAGES:-all}" = swagger ]; then
    status="status-page: tested by the contract stage"
  else
    echo "== the status page (contract/status.mjs)"
    STATUS_SCREENSHOT="$OUT/status.png" show node "$HERE/status.mjs" || rc=$?
    status=$last
    if [ -n "${STATUS_ESTATE_URL:-}" ]; then
      echo "== the status page over an estate (contract/estate.mjs)"
      ESTATE_SCREENSHOT="$OUT/status-estate.png" show node "$HERE/estate.mjs" || rc=$?
      status="$status | ${last#status-estate: }"
    else
      status="$status | estate: not asked (STATUS_ESTATE_URL is not set)"
    fi
  fi
  local shots=""
  [ -f "$OUT/swagger-ui.png" ] && shots="; screenshots ${OUT#"$ROOT"/}/swagger-ui.png"
  [ -f "$OUT/status.png" ] && shots="${shots:-; screenshots} ${OUT#"$ROOT"/}/status.png"
  echo "${swagger#swagger-ui: } | ${status#status-page: }$shots" | cut -c1-400 > "$LOGS/browser.summary"
  return $rc
}

run_stage() {
  local name=$1 started rc
  started=$(now)
  rm -f "$LOGS/$name.summary"
  set +e
  (set -e; "stage_$name") >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  local summary
  if [ -f "$LOGS/$name.summary" ]; then
    summary=$(cat "$LOGS/$name.summary")
  else
    summary=$( (grep 'FAILED' "$LOGS/$name.log" || grep -v '^\s*$' "$LOGS/$name.log" || true) | tail -n 1 | cut -c1-240)
  fi
  if [ $rc -eq 0 ]; then
    printf '%-8s %-4s %7s  %s\n' "$name" "PASS" "$(since "$started")" "$summary"
  else
    printf '%-8s %-4s %7s  %s\n' "$name" "FAIL" "$(since "$started")" "$summary"
    echo "---- last lines of $LOGS/$name.log" >&2
    tail -n 40 "$LOGS/$name.log" | sed 's/^/    /' >&2
    failed+=("$name")
  fi
}

# --- main ---------------------------------------------------------------------

total=$(now)
echo "contract: $SPEC${HEALTHD_URL:+ against $HEALTHD_URL}"
setup venv  # every stage uses it (the browser stage for YAML -> JSON)
if wants lint || wants sdk || wants browser; then setup npm; fi
if wants browser; then setup chromium; fi

failed=()
for stage in "${ALL_STAGES[@]}"; do
  if wants "$stage"; then run_stage "$stage"; fi
done

# The closing line, in the form CI reads: "contract: N passed, N failed".
echo "contract: $(since "$total") in all${failed[*]:+, failed: ${failed[*]}}"
echo "contract: $(( ${#stages[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
