#!/usr/bin/env python3
"""Checks the OpenAPI document `tally serve` serves against tools no one here wrote.

Usage: openapi_check.py TALLY_BINARY TOOLS_VENV

1. Starts `tally serve` on a free loopback port (port 0; the port is read from its log) with
   its own temporary `--data` directory and `--no-billing-scheduler`.
2. Validates `/openapi.json` with `openapi-spec-validator` (OpenAPI 3.1).
3. Fuzzes the running server with `schemathesis run` twice: once with an API key (scopes
   events:write,usage:read) and once with a user JWT of the org's owner, checking that no
   answer is a 5xx, every status and body is the documented one, schema-invalid requests are
   refused and schema-valid ones are not. The org, project, key and token come from the
   binary's own CLI (README "Three steps"); the org is on the enterprise plan so its rate
   limit does not turn the run into 429s.
4. Plants a fault in a copy of the document for each tool (a malformed `info` for the
   validator, a missing `202` for schemathesis) and fails unless the tool catches it, so a
   tool that quietly checks nothing cannot pass the suite.
5. Stops the server by PID, pass or fail.

Exits non-zero, with the tools' output, on any finding. Bounded: a few hundred requests per
operation at most, and a hard time limit per run.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

# Test cases per operation and phase; with 28 operations one run takes ~10-30 s on 2 cores.
MAX_EXAMPLES = 25
# Hard limit per schemathesis run (seconds); it normally ends long before.
RUN_TIMEOUT = 150
SEED = 20261205
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
    ]
)

# Schema-valid requests the document cannot tell apart from valid ones, refused with a
# documented 400: constraints between fields or on stored data, which JSON Schema cannot
# state. `positive_data_acceptance` accepts a 400 for these operations only; every other
# check still runs on them.
# Each entry: (operation id, the rule beyond the schema that refuses with the 400).
RULES_BEYOND_THE_SCHEMA = [
    ("getUsage", "A meter the org does not have (400 unknown_meter), `to` before `from`, or "
     "more than 10,000 buckets or 60 months between them."),
    ("getEntitlements", "A meter the catalogue does not have (400 unknown_meter): the "
     "catalogue is the operator's data, not the document's."),
    ("createKey", "An `expires_at` that is not in the future (400 invalid_field): a bound on "
     "the clock."),
    ("listLineEvents", "A `cursor` the store did not issue (400 invalid_cursor): a constraint "
     "on stored data."),
    ("putSecurityPolicy", "An `ip_allowlist` entry that is not a network in CIDR notation, or "
     "that has bits set below its prefix (400 invalid_field): a string pattern cannot state "
     "either exactly."),
]
OPERATIONS = "".join(
    f'[[operations]]\n# {why}\ninclude-operation-id = "{op}"\n'
    'checks.positive_data_acceptance.expected-statuses = '
    '["2xx", 400, 401, 403, 404, 409, 429]\n\n'
    for op, why in RULES_BEYOND_THE_SCHEMA
)


def step(msg):
    print(f"\n--- {msg} ({time.strftime('%H:%M:%S', time.gmtime())})", flush=True)


def child_env():
    """The environment of every tally process this check starts: the caller's, without any
    TALLY_* setting (a TALLY_STORE, TALLY_QUEUE, TALLY_CATALOGUE or TALLY_NOW in the shell
    must not point the fuzzing, which deletes its org, at another backend), with the log
    filter that prints the "listening on" line this script waits for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env["TALLY_LOG"] = "warn,tally=info"
    # The fuzzer sends hundreds of requests a second with one user token; at the default
    # per-user limit most would be 429s and reach no handler.
    env["TALLY_USER_RATE"] = "1000000"
    return env


def cli(tally, data, *args):
    out = subprocess.run(
        [tally, *args, "--data", data, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    return json.loads(out.stdout)


def start_server(tally, data, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [tally, "serve", "--addr", "127.0.0.1:0", "--data", data, "--no-billing-scheduler"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(
                    f"tally serve exited ({proc.returncode}):\n{open(log_path).read()}"
                )
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", open(log_path).read())
            if m:
                base = m.group(1)
                try:
                    urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
                    return proc, base
                except OSError:
                    pass
            time.sleep(0.1)
        raise SystemExit(f"tally serve did not answer within 30 s:\n{open(log_path).read()}")
    except BaseException:
        # The caller's `finally` never sees a server that did not come up: stop it here.
        stop_server(proc)
        raise


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def schemathesis(venv, workdir, name, base, token, config, select, schema=None):
    cfg = os.path.join(workdir, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(OPERATIONS)
        f.write("[parameters]\n")
        for k, v in config.items():
            f.write(f"{json.dumps(k)} = {json.dumps(v)}\n")
    cmd = [
        os.path.join(venv, "bin", "schemathesis"),
        "--config-file",
        cfg,
        "run",
        schema or f"{base}/openapi.json",
        "--url",
        base,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "ndjson",
        "--report-dir",
        os.path.join(workdir, f"report-{name}"),
        *select,
    ]
    step(f"schemathesis ({name})")
    started = time.monotonic()
    try:
        hooks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis_hooks.py")
        env = {**os.environ, "SCHEMATHESIS_HOOKS": hooks}
        rc = subprocess.run(cmd, cwd=workdir, env=env, timeout=RUN_TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        print(f"schemathesis ({name}) ran over {RUN_TIMEOUT} s", file=sys.stderr)
        return False
    print(f"schemathesis ({name}): exit {rc} in {time.monotonic() - started:.0f} s", flush=True)
    return rc == 0


def main():
    tally, venv = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if not os.access(tally, os.X_OK):
        raise SystemExit(f"{tally} is not an executable tally binary (run cargo build -p tally)")
    workdir = tempfile.mkdtemp(prefix="tally-openapi-")
    data = os.path.join(workdir, "data")
    log_path = os.path.join(workdir, "serve.log")
    proc = None
    ok = False
    # SIGTERM/SIGINT (CI cancelling) still stop the server through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        org = cli(tally, data, "org", "create", "--name", "Fuzz", "--slug", "fuzz",
                  "--owner-email", "owner@example.com", "--plan", "enterprise")
        project = cli(tally, data, "project", "create", "--org", org["id"], "--name", "Web",
                      "--slug", "web")
        key = cli(tally, data, "key", "create", "--org", org["id"], "--name", "fuzz",
                  "--scopes", "events:write,usage:read")["key"]
        jwt = cli(tally, data, "token", "create", "--user", org["owner_id"], "--ttl", "1h")["token"]

        step("starting tally serve")
        proc, base = start_server(tally, data, log_path)
        print(f"tally serve (pid {proc.pid}) on {base}", flush=True)

        step("openapi-spec-validator /openapi.json")
        doc_path = os.path.join(workdir, "openapi.json")
        with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as r:
            doc = json.load(r)
        with open(doc_path, "w") as f:
            json.dump(doc, f)
        if doc.get("openapi", "").split(".")[:2] != ["3", "1"]:
            raise SystemExit(f"/openapi.json is OpenAPI {doc.get('openapi')!r}, not 3.1")
        validate = [os.path.join(venv, "bin", "openapi-spec-validator"), "--schema", "3.1",
                    "--validation-errors", "all"]
        subprocess.run([*validate, doc_path], check=True)
        step("planted fault: the validator must refuse a document whose info is a string")
        bad_doc = os.path.join(workdir, "planted-invalid.json")
        with open(bad_doc, "w") as f:
            json.dump({**doc, "info": "not an object"}, f)
        planted = subprocess.run([*validate, bad_doc], capture_output=True, text=True)
        if planted.returncode == 0:
            raise SystemExit("openapi-spec-validator accepted a malformed document")
        print("caught, as it must be", flush=True)

        params = {
            "path.org_id": org["id"],
            "query.org_id": org["id"],
            "path.project_id": project["id"],
            # An asset the dashboard embeds, so its 200 and 304 are fuzzed, not just 404s.
            "path.path": "app.js",
        }
        # Deleting the org would turn every later request into a 404: it runs last, alone.
        rest = ["--exclude-operation-id", "deleteOrg"]
        results = [
            schemathesis(venv, workdir, "api-key", base, key, params, rest),
            schemathesis(venv, workdir, "user-jwt", base, jwt, params, rest),
        ]
        # A document that no longer lists 202 for POST /v1/events: schemathesis must report
        # the undocumented status, or its green runs above prove nothing.
        step("planted fault: schemathesis must report an undocumented status")
        post_events = doc["paths"]["/v1/events"]["post"]
        lying = json.loads(json.dumps(doc))
        del lying["paths"]["/v1/events"]["post"]["responses"]["202"]
        lying_path = os.path.join(workdir, "planted-no-202.json")
        with open(lying_path, "w") as f:
            json.dump(lying, f)
        # A fresh key: the runs above may have revoked or rotated every key they could list
        # (schemathesis follows the links from GET .../keys), and a key that only gets 401s
        # would hide the planted fault behind a documented status.
        planted_key = cli(tally, data, "key", "create", "--org", org["id"], "--name", "planted",
                          "--scopes", "events:write")["key"]
        caught = not schemathesis(venv, workdir, "planted-no-202", base, planted_key, params,
                                  ["--include-operation-id", post_events["operationId"]],
                                  schema=lying_path)
        print("caught, as it must be" if caught else "NOT caught", flush=True)
        results.append(caught)
        results.append(schemathesis(venv, workdir, "user-jwt-delete", base, jwt, params,
                                    ["--include-operation-id", "deleteOrg"]))
        ok = all(results)
        if not ok:
            with open(log_path) as f:
                tail = f.readlines()[-40:]
            print(f"\nserver log ({log_path}), last lines:\n{''.join(tail)}", file=sys.stderr)
    finally:
        if proc is not None:
            stop_server(proc)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        sys.exit(1)
    step("OpenAPI checks passed")


if __name__ == "__main__":
    main()
