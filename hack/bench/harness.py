#!/usr/bin/env python3
"""Benchmark harness for certus-vault (issue 8). Driven by hack/bench/run; see its --help.

Every Vault-facing scenario runs against the benchmark's OWN OpenBao (CERTUS_STATE_DIR,
another port), restarted empty with `hack/openbao-start.sh --fresh` before each
contender, so other engineers' dev server is never touched.

How figures are obtained (also in docs/performance.md):
- wall time: time.perf_counter() around the contender process, from spawn to exit.
- peak RSS: ru_maxrss of the waited-for contender process (os.wait4); for a shell loop
  that is the largest single process of the loop (the kernel's RUSAGE_CHILDREN rule).
- Vault requests: "type":"request" entries that OpenBao's file audit device appended
  between the contender's start and exit (byte offsets of $CERTUS_AUDIT_LOG). The file
  device writes the entry before the request is served, so none is missed.
"""

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------
# Services


class Services:
    """The benchmark's own OpenBao (and PostgreSQL), through the project's hack scripts."""

    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        self.env["CERTUS_STATE_DIR"] = args.state_dir
        self.env["CERTUS_BAO_PORT"] = str(args.bao_port)
        self.env["CERTUS_PG_PORT"] = str(args.pg_port)
        self.addr = f"http://127.0.0.1:{args.bao_port}"
        self.token = self.env.get("CERTUS_BAO_TOKEN", "certus-dev-root")
        self.audit = os.path.join(args.state_dir, "audit", "audit.log")
        self.pg = None

    def fresh_vault(self):
        t = time.perf_counter()
        r = subprocess.run(
            [os.path.join(ROOT, "hack", "openbao-start.sh"), "--fresh"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if r.returncode != 0:
            raise SystemExit(f"hack/openbao-start.sh --fresh failed:\n{r.stderr[-2000:]}")
        log(f"fresh OpenBao at {self.addr} ({time.perf_counter() - t:.1f}s)")
        return Vault(self.addr, self.token)

    def stop_vault(self):
        subprocess.run([os.path.join(ROOT, "hack", "openbao-stop.sh")], env=self.env,
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def fresh_postgres(self):
        r = subprocess.run(
            [os.path.join(ROOT, "hack", "postgres-start.sh"), "--fresh"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if r.returncode != 0:
            raise SystemExit(f"hack/postgres-start.sh --fresh failed:\n{r.stderr[-2000:]}")
        pg = {}
        with open(os.path.join(self.args.state_dir, "postgres.env")) as f:
            for line in f:
                m = re.match(r"export (\w+)='(.*)'$", line.strip())
                if m:
                    pg[m.group(1)] = m.group(2)
        self.pg = pg
        return pg

    def stop_postgres(self):
        subprocess.run([os.path.join(ROOT, "hack", "postgres-stop.sh")], env=self.env,
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def contender_env(self):
        env = dict(self.env)
        for k in ("VAULT_NAMESPACE", "BAO_NAMESPACE", "VAULT_CACERT", "BAO_CACERT"):
            env.pop(k, None)
        env.update(VAULT_ADDR=self.addr, VAULT_TOKEN=self.token, BAO_ADDR=self.addr,
                   BAO_TOKEN=self.token, RUST_LOG="warn")
        return env


class Vault:
    """A tiny client for the harness's own setup and checks (never timed)."""

    def __init__(self, addr, token):
        u = urllib.parse.urlparse(addr)
        self.host, self.port, self.token = u.hostname, u.port, token

    def call(self, method, path, body=None, ok=(200, 204)):
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        data = json.dumps(body) if body is not None else None
        c.request(method, "/v1/" + path, body=data,
                  headers={"X-Vault-Token": self.token, "Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read()
        c.close()
        if r.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {text[:300]!r}")
        return json.loads(text) if text else None

    def list(self, path):
        try:
            v = self.call("LIST", path)
        except RuntimeError as e:
            if "HTTP 404" in str(e):
                return []
            raise
        return (v or {}).get("data", {}).get("keys", [])


class AuditWindow:
    """Counts the audit entries OpenBao appended between start() and stop()."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def start(self):
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        return self

    def stop(self):
        counts = {"requests": 0, "reads": 0, "writes": 0, "logins": 0, "lookup_self": 0,
                  "errors": 0, "by_path": {}}
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for line in f:
                if b'"type":"request"' not in line:
                    if b'"type":"response"' in line and b'"error":' in line:
                        e = json.loads(line)
                        if e.get("error"):
                            counts["errors"] += 1
                            r = e.get("request", {})
                            k = f"{r.get('operation', '')} {shape(r.get('path', ''))}"
                            eb = counts.setdefault("errors_by_path", {})
                            eb[k] = eb.get(k, 0) + 1
                    continue
                e = json.loads(line)
                req = e.get("request", {})
                path, op = req.get("path", ""), req.get("operation", "")
                counts["requests"] += 1
                if path.startswith("auth/") and path.endswith("/login") or "/login/" in path:
                    counts["logins"] += 1
                elif path == "auth/token/lookup-self":
                    counts["lookup_self"] += 1
                    counts["reads"] += 1
                elif op in ("read", "list"):
                    counts["reads"] += 1
                else:
                    counts["writes"] += 1
                key = f"{op} {shape(path)}"
                counts["by_path"][key] = counts["by_path"].get(key, 0) + 1
        return counts


def shape(path):
    """A Vault path with its per-object parts replaced, for per-kind request counts."""
    path = re.sub(r"(sys/policies/acl/|sys/policy/).+", r"\1*", path)
    path = re.sub(r"(auth/[^/]+/role/)[^/]+", r"\1*", path)
    path = re.sub(r"(sys/leases/lookup/.*/)[^/]+$", r"\1*", path)
    return path


GNU_TIME = "/usr/bin/time"


def run_process(cmd, env=None, cwd=None, timeout=None):
    """Runs one contender under GNU time; returns wall seconds, peak RSS (KiB), CPU, exit
    code and output. GNU time, not this Python process, forks the contender: a child
    forked from Python would carry Python's RSS into its ru_maxrss (the kernel records
    the pre-exec high-water mark), so every contender would show at least ~20 MiB."""
    out = tempfile.TemporaryFile("w+")
    tf = tempfile.NamedTemporaryFile("r", delete=False)
    t = time.perf_counter()
    p = subprocess.Popen([GNU_TIME, "-o", tf.name, "-f", "%M %U %S %x"] + list(cmd),
                         env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    wall = time.perf_counter() - t
    out.seek(0)
    text = out.read()
    out.close()
    fields = (open(tf.name).read().strip().splitlines() or [""])[-1].split()
    os.unlink(tf.name)
    try:
        rss, user, sys_, code = int(fields[0]), float(fields[1]), float(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        rss, user, sys_, code = 0, 0.0, 0.0, p.returncode
    return {"seconds": wall, "peak_rss_kib": rss, "exit": code, "output": text,
            "user_s": user, "sys_s": sys_}


# ---------------------------------------------------------------------------------------
# Scenario 1-3 workload: N VaultPolicy + N kubernetes-auth VaultRole


def policy_body(i):
    return (f'path "apps/data/app-{i:05d}/*" {{\n  capabilities = ["read", "list"]\n}}\n\n'
            f'path "database/creds/app-{i:05d}" {{\n  capabilities = ["read"]\n}}\n\n'
            f'path "auth/token/renew-self" {{\n  capabilities = ["update"]\n}}\n')


OWNER_MARKER = "# managed-by: certus-vault-operator owner="
NS = "bench"


def policy_text(i):
    # Exactly what certus writes (certus_core::policy::desired): marker line + rules.
    return f"{OWNER_MARKER}{NS}/app-{i:05d}\n{policy_body(i)}"


def role_body(i):
    # Exactly what certus writes for the role below (certus_core::role::desired).
    return {"bound_service_account_names": [f"app-{i:05d}"],
            "bound_service_account_namespaces": [NS],
            "token_policies": [f"bench-app-{i:05d}"],
            "token_ttl": "900s"}


def write_manifests(d, n, connection=None):
    """N VaultPolicy + N VaultRole manifests, one file per resource (as in a GitOps repo)."""
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        body = "\n".join("    " + l if l else "" for l in policy_body(i).splitlines())
        with open(os.path.join(d, f"policy-{i:05d}.yaml"), "w") as f:
            f.write(f"""apiVersion: vault.certus.io/v1alpha1
kind: VaultPolicy
metadata:
  name: app-{i:05d}
  namespace: {NS}
spec:
  name: bench-app-{i:05d}
  rules: |
{body}
""")
        with open(os.path.join(d, f"role-{i:05d}.yaml"), "w") as f:
            f.write(f"""apiVersion: vault.certus.io/v1alpha1
kind: VaultRole
metadata:
  name: app-{i:05d}
  namespace: {NS}
spec:
  name: app-{i:05d}
  kubernetes:
    mount: kubernetes
    boundServiceAccountNames: ["app-{i:05d}"]
    boundServiceAccountNamespaces: ["{NS}"]
    policyRefs: ["app-{i:05d}"]
    tokenTTL: 15m
""")
    if connection:
        with open(os.path.join(d, "connection.yaml"), "w") as f:
            f.write(connection)


def write_floor_requests(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"PUT\t/v1/sys/policies/acl/bench-app-{i:05d}\t"
                    f"{json.dumps({'policy': policy_text(i)}, separators=(',', ':'))}\n")
        for i in range(n):
            f.write(f"POST\t/v1/auth/kubernetes/role/app-{i:05d}\t"
                    f"{json.dumps(role_body(i), separators=(',', ':'))}\n")


def write_bao_loop(d, n, bao):
    """The proposal's way: one `bao` invocation per object, from a shell script."""
    os.makedirs(os.path.join(d, "hcl"), exist_ok=True)
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"BAO={bao}"]
    for i in range(n):
        p = os.path.join(d, "hcl", f"bench-app-{i:05d}.hcl")
        with open(p, "w") as f:
            f.write(policy_text(i))
        lines.append(f'"$BAO" policy write bench-app-{i:05d} {p} >/dev/null')
    for i in range(n):
        lines.append(
            f'"$BAO" write auth/kubernetes/role/app-{i:05d} bound_service_account_names=app-{i:05d} '
            f'bound_service_account_namespaces={NS} token_policies=bench-app-{i:05d} token_ttl=15m >/dev/null')
    script = os.path.join(d, "bao-loop.sh")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(script, 0o755)
    return script


HVAC_LOOP = r'''
import json, os, sys
import hvac
n = int(sys.argv[1])
client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
pol = json.load(open(sys.argv[2]))
for name, text in pol:
    client.sys.create_or_update_acl_policy(name=name, policy=text)
for i in range(n):
    client.auth.kubernetes.create_role(
        name=f"app-{i:05d}",
        bound_service_account_names=[f"app-{i:05d}"],
        bound_service_account_namespaces=["bench"],
        policies=[f"bench-app-{i:05d}"],
        ttl="15m",
        mount_point="kubernetes",
    )
'''


def prepare_vault_for_roles(v):
    v.call("POST", "sys/auth/kubernetes", {"type": "kubernetes"})


def verify_objects(v, n):
    pols = [p for p in v.list("sys/policies/acl") if p.startswith("bench-app-")]
    roles = v.list("auth/kubernetes/role")
    return {"policies_in_vault": len(pols), "roles_in_vault": len(roles),
            "complete": len(pols) == n and len(roles) == n}


def certus_summary(output):
    m = re.search(r"Vault requests: (\d+) reads, (\d+) writes, (\d+) logins", output)
    s = re.search(r"(Applied|Plan): (.*)", output)
    return {"certus_reads": int(m.group(1)) if m else None,
            "certus_writes": int(m.group(2)) if m else None,
            "certus_logins": int(m.group(3)) if m else None,
            "certus_result": s.group(0) if s else None}


def contender_row(name, res, audit, n, concurrency, extra=None):
    row = {"contender": name, "concurrency": concurrency, "seconds": round(res["seconds"], 3),
           "peak_rss_mib": round(res["peak_rss_kib"] / 1024, 1),
           "cpu_s": round(res["user_s"] + res["sys_s"], 2), "exit": res["exit"],
           "vault_requests": audit["requests"], "vault_reads": audit["reads"],
           "vault_writes": audit["writes"], "vault_logins": audit["logins"],
           "requests_per_s": round(audit["requests"] / res["seconds"], 1) if res["seconds"] else None,
           "objects_per_s": round(2 * n / res["seconds"], 1) if res["seconds"] else None,
           "requests_by_path": audit["by_path"], "load_after": loadavg()}
    if extra:
        row.update(extra)
    return row


def scenario_1_2(args, svc, work, results):
    n, c = args.n, args.concurrency
    man = os.path.join(work, "manifests")
    write_manifests(man, n)
    floor_reqs = os.path.join(work, "floor.requests")
    write_floor_requests(floor_reqs, n)
    rows = []
    s2 = None
    env = svc.contender_env()

    for name in args.contenders:
        # The shell loop takes minutes and its noise is irrelevant next to its cost.
        reps = 1 if name == "bao-loop" else max(1, args.repeat)
        trials = []
        for rep in range(reps):
            row = run_contender(args, svc, work, name, n, c, man, floor_reqs, env)
            trials.append(row)
            if name == "certus-vault" and rep == reps - 1 and "2" in args.scenarios:
                s2 = idle_resync(args, svc, work, man, n, c, env)
        trials.sort(key=lambda r: r["seconds"])
        row = dict(trials[len(trials) // 2])  # the median run (by wall time)
        row["trials_s"] = [t["seconds"] for t in trials]
        rows.append(row)
    floor = next((r for r in rows if r["contender"] == "floor"), None)
    for r in rows:
        r["ratio_to_floor"] = round(r["seconds"] / floor["seconds"], 2) if floor else None
    results["scenario1"] = {"n_policies": n, "n_roles": n, "concurrency": c,
                            "repeat": args.repeat, "rows": rows}
    if s2 is not None:
        results["scenario2"] = s2


def run_contender(args, svc, work, name, n, c, man, floor_reqs, env):
    """One cold-converge run of one contender into a fresh OpenBao."""
    v = svc.fresh_vault()
    prepare_vault_for_roles(v)
    log(f"scenario 1: {name} ({n} policies + {n} roles, load {loadavg()})")
    if name == "floor":
        cmd = [args.floor, f"127.0.0.1:{args.bao_port}", svc.token, str(c), floor_reqs]
    elif name == "certus-vault":
        state = os.path.join(work, "certus-state.json")
        if os.path.exists(state):
            os.remove(state)
        cmd = [args.certus, "apply", "-f", man, "--concurrency", str(c), "--state", state,
               "--output-dir", os.path.join(work, "out")]
    elif name == "bao-loop":
        cmd = ["bash", write_bao_loop(os.path.join(work, "bao"), n, args.bao)]
    elif name == "hvac-loop":
        script = os.path.join(work, "hvac_loop.py")
        with open(script, "w") as f:
            f.write(HVAC_LOOP)
        pols = os.path.join(work, "hvac-policies.json")
        with open(pols, "w") as f:
            json.dump([[f"bench-app-{i:05d}", policy_text(i)] for i in range(n)], f)
        cmd = [args.python, script, str(n), pols]
    else:
        raise SystemExit(f"unknown contender {name}")
    w = AuditWindow(svc.audit).start()
    res = run_process(cmd, env=env, cwd=work, timeout=args.timeout)
    audit = w.stop()
    check = verify_objects(v, n)
    extra = dict(check)
    if name == "certus-vault":
        extra.update(certus_summary(res["output"]))
    if name == "floor":
        try:
            extra["floor_report"] = json.loads(res["output"].strip().splitlines()[-1])
        except Exception:
            extra["floor_report"] = res["output"][-500:]
    if res["exit"] != 0 or not check["complete"]:
        extra["output_tail"] = res["output"][-2000:]
        log(f"  {name}: exit {res['exit']}, {check}: {res['output'][-800:]}")
    conc = c if name in ("floor", "certus-vault") else 1
    row = contender_row(name, res, audit, n, conc, extra)
    log(f"  {name}: {row['seconds']}s, {row['vault_requests']} requests, "
        f"{row['peak_rss_mib']} MiB, complete={check['complete']}")
    return row


def idle_resync(args, svc, work, man, n, c, env):
    """Scenario 2 on the Vault the last certus-vault cold run left behind."""
    state = os.path.join(work, "certus-state.json")
    log(f"scenario 2: idle resync of the same {2 * n} resources (load {loadavg()})")
    s2 = {}
    for label, extra_args in (("apply (with state file)", ["--state", state]),
                              ("apply (no state file)", ["--state", os.path.join(work, "none.json")])):
        if os.path.exists(os.path.join(work, "none.json")):
            os.remove(os.path.join(work, "none.json"))
        cmd2 = [args.certus, "apply", "-f", man, "--concurrency", str(c),
                "--output-dir", os.path.join(work, "out")] + extra_args
        w = AuditWindow(svc.audit).start()
        r2 = run_process(cmd2, env=env, cwd=work, timeout=args.timeout)
        a2 = w.stop()
        s2[label] = {
            "seconds": round(r2["seconds"], 3), "exit": r2["exit"],
            "peak_rss_mib": round(r2["peak_rss_kib"] / 1024, 1),
            "vault_requests": a2["requests"], "vault_writes": a2["writes"],
            "vault_reads": a2["reads"], "vault_logins": a2["logins"],
            "reads_per_resource": round(a2["reads"] / (2 * n), 3),
            "requests_by_path": a2["by_path"], **certus_summary(r2["output"])}
        if r2["exit"] != 0:
            s2[label]["output_tail"] = r2["output"][-2000:]
        log(f"  idle {label}: {a2['writes']} writes, {a2['reads']} reads in {r2['seconds']:.2f}s")
    return s2


def scenario_3(args, svc, work, results):
    n, c = args.n, args.concurrency
    env = svc.contender_env()
    out = {}
    for variant in ("approle", "approle-nolist", "token"):
        v = svc.fresh_vault()
        prepare_vault_for_roles(v)
        if variant.startswith("approle"):
            if variant == "approle":
                policy = 'path "*" {\n  capabilities = ["create", "read", "update", "delete", "list", "sudo"]\n}\n'
            else:
                # Least privilege without `list`: the bulk LISTs are refused, and must not
                # cost a login each; certus-vault falls back to reading objects.
                policy = ('path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete"] }\n'
                          'path "auth/kubernetes/role/*" { capabilities = ["create", "read", "update", "delete"] }\n'
                          'path "sys/auth" { capabilities = ["read"] }\n'
                          'path "auth/token/lookup-self" { capabilities = ["read"] }\n')
            v.call("POST", "sys/policies/acl/bench-operator", {"policy": policy})
            v.call("POST", "sys/auth/approle", {"type": "approle"})
            v.call("POST", "auth/approle/role/certus-bench",
                   {"token_policies": ["bench-operator"], "token_ttl": "1h"})
            role_id = v.call("GET", "auth/approle/role/certus-bench/role-id")["data"]["role_id"]
            secret_id = v.call("POST", "auth/approle/role/certus-bench/secret-id")["data"]["secret_id"]
            auth = f"""    appRole:
      mount: approle
      roleId: {role_id}
      secretIdRef: {{name: vault-approle, key: secret-id}}"""
            secret = {"secret-id": secret_id}
            sname = "vault-approle"
        else:
            auth = """    token:
      secretRef: {name: vault-token, key: token}"""
            secret = {"token": svc.token}
            sname = "vault-token"
        data = "\n".join(f"  {k}: {base64.b64encode(x.encode()).decode()}" for k, x in secret.items())
        conn = f"""apiVersion: vault.certus.io/v1alpha1
kind: VaultConnection
metadata:
  name: default
  namespace: {NS}
spec:
  address: {svc.addr}
  auth:
{auth}
---
apiVersion: v1
kind: Secret
metadata:
  name: {sname}
  namespace: {NS}
data:
{data}
"""
        man = os.path.join(work, f"manifests-{variant}")
        write_manifests(man, n, connection=conn)
        state = os.path.join(work, f"state-{variant}.json")
        if os.path.exists(state):
            os.remove(state)
        # Without VAULT_ADDR/VAULT_TOKEN: the connection manifest is the only way in.
        env3 = {k: x for k, x in env.items() if k not in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN")}
        runs = {}
        for run in ("cold", "idle"):
            log(f"scenario 3: {variant} connection, {run} run (load {loadavg()})")
            w = AuditWindow(svc.audit).start()
            r = run_process([args.certus, "apply", "-f", man, "--concurrency", str(c),
                             "--state", state, "--output-dir", os.path.join(work, "out")],
                            env=env3, cwd=work, timeout=args.timeout)
            a = w.stop()
            runs[run] = {"seconds": round(r["seconds"], 3), "exit": r["exit"],
                         "vault_requests": a["requests"], "vault_writes": a["writes"],
                         "vault_logins": a["logins"], "lookup_self": a["lookup_self"],
                         **certus_summary(r["output"])}
            if r["exit"] != 0:
                runs[run]["output_tail"] = r["output"][-2000:]
            log(f"  {variant} {run}: audit logins {a['logins']}, lookup-self {a['lookup_self']}, "
                f"certus logins {runs[run]['certus_logins']}")
        runs.update(verify_objects(v, n))
        out[variant] = runs
    # Scenario 1-2 used VAULT_ADDR/VAULT_TOKEN (a token, validated once with lookup-self).
    results["scenario3"] = out


# ---------------------------------------------------------------------------------------
# Scenario 4: DynamicCredentials against PostgreSQL


CHECKER = r'''
import json, os, sys, time, threading, concurrent.futures
import psycopg
outdir, host, port, db, duration, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
workers = int(sys.argv[7])

def creds(path):
    user = pw = None
    with open(path) as f:
        in_data = False
        for line in f:
            if line.startswith("data:"):
                in_data = True
                continue
            if in_data:
                if not line.startswith("  ") or line.startswith("   "):
                    if not line.startswith("  "):
                        in_data = False
                    continue
                k, _, v = line.strip().partition(": ")
                import base64
                if k == "username":
                    user = base64.b64decode(v).decode()
                elif k == "password":
                    pw = base64.b64decode(v).decode()
    return user, pw

files = sorted(os.path.join(r, f) for r, _, fs in os.walk(outdir) for f in fs if f.endswith(".yaml"))
stats = {"attempts": 0, "ok": 0, "auth_failures": 0, "other_failures": 0, "unreadable": 0,
         "rounds": 0, "late_rounds": 0, "samples": []}
lock = threading.Lock()

def check(path):
    try:
        user, pw = creds(path)
    except FileNotFoundError:
        return "unreadable", path
    if not user:
        return "unreadable", path
    try:
        with psycopg.connect(host=host, port=port, dbname=db, user=user, password=pw,
                             connect_timeout=10, sslmode="disable") as c:
            c.execute("select 1").fetchone()
        return "ok", None
    except psycopg.OperationalError as e:
        msg = str(e)
        kind = "auth_failures" if ("password authentication failed" in msg or "does not exist" in msg) else "other_failures"
        return kind, f"{user}: {msg.strip()[:200]}"

pool = concurrent.futures.ThreadPoolExecutor(workers)
interval = 1.0 / rate if rate > 0 else 1.0
t0 = time.monotonic()
next_round = t0
while time.monotonic() - t0 < duration:
    start = time.monotonic()
    for kind, sample in pool.map(check, files):
        stats["attempts"] += 1
        stats[kind if kind != "ok" else "ok"] += 1
        if sample and len(stats["samples"]) < 10:
            stats["samples"].append(sample)
    stats["rounds"] += 1
    next_round += interval
    now = time.monotonic()
    if now > next_round:
        stats["late_rounds"] += 1
        next_round = now
    else:
        time.sleep(next_round - now)
stats["seconds"] = time.monotonic() - t0
stats["credentials"] = len(files)
stats["logins_per_s"] = stats["attempts"] / stats["seconds"]
stats["rounds_per_credential_per_s"] = stats["rounds"] / stats["seconds"]
print(json.dumps(stats))
'''


def count_leases(v, prefix):
    return len(v.list(f"sys/leases/lookup/{prefix}"))


def scenario_4(args, svc, work, results):
    n = args.dyn
    pg = svc.fresh_postgres()
    v = svc.fresh_vault()
    v.call("POST", "sys/mounts/database", {"type": "database"})
    v.call("POST", "database/config/bench", {
        "plugin_name": "postgresql-database-plugin", "allowed_roles": ["bench"],
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg['CERTUS_PG_PORT']}/{pg['CERTUS_PG_DB']}?sslmode=disable",
        "username": pg["CERTUS_PG_USER"], "password": pg["CERTUS_PG_PASSWORD"],
        "max_open_connections": 8, "verify_connection": True})
    v.call("POST", "database/roles/bench", {
        "db_name": "bench", "default_ttl": args.dyn_ttl, "max_ttl": args.dyn_max_ttl,
        # PUBLIC may connect to the database: no GRANT, so DROP ROLE has nothing to clean.
        "creation_statements": [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
        "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\";"]})
    man = os.path.join(work, "dynamic")
    os.makedirs(man, exist_ok=True)
    with open(os.path.join(man, "dynamic.yaml"), "w") as f:
        for i in range(n):
            f.write(f"""---
apiVersion: vault.certus.io/v1alpha1
kind: DynamicCredential
metadata:
  name: db-{i:04d}
  namespace: {NS}
spec:
  path: database/creds/bench
  secret:
    name: db-{i:04d}
  gracePeriod: {args.dyn_grace}
""")
    outdir = os.path.join(work, "dyn-out")
    shutil.rmtree(outdir, ignore_errors=True)
    env = svc.contender_env()
    log(f"scenario 4: {n} DynamicCredentials (ttl {args.dyn_ttl}, max {args.dyn_max_ttl}) for "
        f"{args.dyn_duration}s, checker at {args.checker_rate} round(s)/s (load {loadavg()})")
    w = AuditWindow(svc.audit).start()
    logf = open(os.path.join(work, "watch.log"), "w+")
    t = time.perf_counter()
    p = subprocess.Popen([args.certus, "apply", "-f", man, "--watch", "--revoke-on-exit",
                          "--output-dir", outdir, "--state", os.path.join(work, "dyn-state.json")],
                         env=env, cwd=work, stdout=logf, stderr=subprocess.STDOUT)
    # Wait until every credential has its Secret file.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and p.poll() is None:
        files = [f for _, _, fs in os.walk(outdir) for f in fs if f.endswith(".yaml")]
        if len(files) >= n:
            break
        time.sleep(0.2)
    issued_in = time.perf_counter() - t
    log(f"  all {n} credentials issued in {issued_in:.1f}s; checking for {args.dyn_duration}s")
    chk_script = os.path.join(work, "checker.py")
    with open(chk_script, "w") as f:
        f.write(CHECKER)
    chk = run_process([args.python, chk_script, outdir, "127.0.0.1", pg["CERTUS_PG_PORT"],
                       pg["CERTUS_PG_DB"], str(args.dyn_duration), str(args.checker_rate),
                       str(args.checker_workers)], env=env, timeout=args.dyn_duration + 300)
    try:
        checker = json.loads(chk["output"].strip().splitlines()[-1])
    except Exception:
        checker = {"error": chk["output"][-1500:]}
    leases_before = count_leases(v, "database/creds/bench/")
    # "Deletion": --revoke-on-exit revokes every credential and removes its Secret file.
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
    wall = time.perf_counter() - t
    ru = None
    audit = w.stop()
    leases_after = count_leases(v, "database/creds/bench/")
    pg_roles = subprocess.run(
        [os.path.join(pg["CERTUS_PG_BIN_DIR"], "psql"), "-X", "-At", "-h", "127.0.0.1", "-p",
         pg["CERTUS_PG_PORT"], "-U", pg["CERTUS_PG_USER"], "-d", pg["CERTUS_PG_DB"], "-c",
         "select count(*) from pg_roles where rolname like 'v-%'"],
        env={**env, "PGPASSWORD": pg["CERTUS_PG_PASSWORD"]}, capture_output=True, text=True).stdout.strip()
    logf.seek(0)
    watch_out = logf.read()
    logf.close()
    bp = audit["by_path"]
    issues = sum(x for k, x in bp.items() if k.endswith("database/creds/bench") and k.startswith("read"))
    renewals = sum(x for k, x in bp.items() if "sys/leases/renew" in k)
    revokes = sum(x for k, x in bp.items() if "sys/leases/revoke" in k)
    results["scenario4"] = {
        "credentials": n, "ttl": args.dyn_ttl, "max_ttl": args.dyn_max_ttl,
        "grace": args.dyn_grace, "duration_s": args.dyn_duration,
        "first_issue_all_s": round(issued_in, 1), "total_s": round(wall, 1),
        "issues": issues, "reissues": max(0, issues - n), "renewals": renewals,
        "revocations": revokes, "vault_requests": audit["requests"],
        "vault_logins": audit["logins"], "requests_by_path": bp,
        "vault_errors_by_path": audit.get("errors_by_path", {}),
        "checker": checker, "checker_peak_rss_mib": round(chk["peak_rss_kib"] / 1024, 1),
        "leases_before_delete": leases_before, "leases_after_delete": leases_after,
        "pg_roles_left": pg_roles, "exit": p.returncode,
        "watch_output_tail": watch_out[-3000:],
    }
    log(f"  issues {issues}, renewals {renewals}, revocations {revokes}, "
        f"failed logins {checker.get('auth_failures')}, leases left {leases_after}")
    svc.stop_postgres()


# ---------------------------------------------------------------------------------------
# Scenarios 5 and 6: cargo benches


def cargo_bench(args, pkg, bench, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    cmd = ["cargo", "bench", "-q", "-p", pkg, "--bench", bench]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def scenario_5(args, svc, work, results):
    extra = {"CERTUS_BENCH_SCALE": ",".join(str(x) for x in args.scale),
             "CERTUS_BENCH_VAULT_SAMPLE": str(args.scale_sample)}
    if args.scale_sample:
        svc.fresh_vault()
        extra.update(VAULT_ADDR=svc.addr, VAULT_TOKEN=svc.token)
    log(f"scenario 5: controller scale {args.scale} (load {loadavg()})")
    out = cargo_bench(args, "certus-controller", "scale", extra)
    rows = [json.loads(l[len("BENCH_JSON "):]) for l in out.splitlines() if l.startswith("BENCH_JSON ")]
    results["scenario5"] = {"rows": rows}


def scenario_6(args, svc, work, results):
    log(f"scenario 6: audit reader, {args.audit_lines} lines (load {loadavg()})")
    out = cargo_bench(args, "certus-audit", "reader", {"CERTUS_BENCH_LINES": str(args.audit_lines)})
    line = next((l for l in out.splitlines() if l.startswith("| audit reader")), "")
    num = lambda pat: (lambda m: float(m.group(1)) if m else None)(re.search(pat, line))
    results["scenario6"] = {
        "lines": num(r"\| (\d+) lines"),
        "mib": num(r"lines \(([\d.]+) MiB"),
        "parse_only_lines_per_s": num(r"parse only: (\d+) lines/s"),
        "pipeline_lines_per_s": num(r"5 rules: (\d+) lines/s"),
        "pipeline_mib_per_s": num(r"lines/s \(([\d.]+) MiB/s\)"),
        "peak_rss_mib": num(r"pipeline pass ([\d.]+) MiB"),
        "rss_before_mib": num(r"before reading ([\d.]+) MiB"),
        "raw": line,
    }


# ---------------------------------------------------------------------------------------
# Report


def machine():
    mem = ""
    try:
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
    except Exception:
        pass
    cpu = ""
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except Exception:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "free_h": mem, "kernel": platform.release(),
            "load_at_start": loadavg()}


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table(results):
    L = []
    m = results["machine"]
    L.append(f"Machine: {m['nproc']} cores ({m['cpu']}), load at start {m['load_at_start']}, "
             f"at end {results.get('load_at_end')}. Mode: {results['mode']}.")
    L.append("")
    s1 = results.get("scenario1")
    if s1:
        L.append(f"### 1. Cold converge: {s1['n_policies']:,} VaultPolicy + {s1['n_roles']:,} VaultRole into an empty OpenBao")
        L.append("")
        L.append("| contender | concurrency | wall s | ratio to floor | Vault requests (R/W/login) | requests/s | objects/s | peak RSS MiB | CPU s | complete |")
        L.append("|---|---:|---:|---:|---|---:|---:|---:|---:|---|")
        for r in s1["rows"]:
            L.append(f"| {r['contender']} | {r['concurrency']} | {fmt(r['seconds'], 2)} | {fmt(r['ratio_to_floor'], 2)}× | "
                     f"{fmt(r['vault_requests'])} ({r['vault_reads']}/{r['vault_writes']}/{r['vault_logins']}) | "
                     f"{fmt(r['requests_per_s'])} | {fmt(r['objects_per_s'])} | {fmt(r['peak_rss_mib'])} | {fmt(r['cpu_s'], 2)} | "
                     f"{'yes' if r['complete'] and r['exit'] == 0 else 'NO (exit %s)' % r['exit']} |")
        L.append("")
    s2 = results.get("scenario2")
    if s2:
        L.append("### 2. Idle resync (nothing changed)")
        L.append("")
        L.append("| run | wall s | Vault writes | Vault reads | reads per resource | logins | peak RSS MiB |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for k, r in s2.items():
            L.append(f"| certus-vault {k} | {fmt(r['seconds'], 2)} | {r['vault_writes']} | {fmt(r['vault_reads'])} | "
                     f"{fmt(r['reads_per_resource'], 2)} | {r['vault_logins']} | {fmt(r['peak_rss_mib'])} |")
        L.append("")
    s3 = results.get("scenario3")
    if s3:
        L.append("### 3. Logins (VaultConnection manifests, no VAULT_TOKEN in the environment)")
        L.append("")
        L.append("| connection | run | Vault requests | login requests (audit) | token lookup-self (audit) | logins counted by certus-vault |")
        L.append("|---|---|---:|---:|---:|---:|")
        for variant, runs in s3.items():
            for run in ("cold", "idle"):
                r = runs[run]
                L.append(f"| {variant} | {run} | {fmt(r['vault_requests'])} | {r['vault_logins']} | {r['lookup_self']} | {fmt(r['certus_logins'])} |")
        L.append("")
    s4 = results.get("scenario4")
    if s4:
        c = s4["checker"]
        L.append(f"### 4. Dynamic credentials: {s4['credentials']} DynamicCredentials, database/creds, TTL {s4['ttl']}, max TTL {s4['max_ttl']}, {s4['duration_s']} s")
        L.append("")
        L.append("| issues | re-issues | renewals | revocations | checker logins (ok / failed auth / other) | checker logins/s | rounds/credential/s | leases after deletion | PG roles left |")
        L.append("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        L.append(f"| {s4['issues']} | {s4['reissues']} | {s4['renewals']} | {s4['revocations']} | "
                 f"{fmt(c.get('ok'))} / {fmt(c.get('auth_failures'))} / {fmt(c.get('other_failures'))} | "
                 f"{fmt(c.get('logins_per_s'))} | {fmt(c.get('rounds_per_credential_per_s'), 2)} | {s4['leases_after_delete']} | {s4['pg_roles_left']} |")
        L.append("")
    s5 = results.get("scenario5")
    if s5:
        L.append("### 5. Controller scale (reflector store + pure pipeline, Kubernetes faked in-process)")
        L.append("")
        L.append("| what | objects | objects/s | µs per object | peak RSS (VmHWM) MiB | RSS of the store MiB |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for r in s5["rows"]:
            L.append(f"| {r['what']} | {fmt(r['objects'])} | {fmt(r.get('objects_per_s'))} | {fmt(r.get('us_per_object'), 1)} | "
                     f"{fmt(r.get('vmhwm_mib'))} | {fmt(r.get('store_rss_mib'))} |")
        L.append("")
    s6 = results.get("scenario6")
    if s6:
        L.append("### 6. Audit reader")
        L.append("")
        L.append("| lines | MiB | parse only lines/s | tail+parse+metrics+5 rules lines/s | MiB/s | peak RSS MiB |")
        L.append("|---:|---:|---:|---:|---:|---:|")
        L.append(f"| {fmt(s6['lines'], 0)} | {fmt(s6['mib'])} | {fmt(s6['parse_only_lines_per_s'], 0)} | "
                 f"{fmt(s6['pipeline_lines_per_s'], 0)} | {fmt(s6['pipeline_mib_per_s'])} | {fmt(s6['peak_rss_mib'])} |")
        L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="quick")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--contenders", default="floor,certus-vault,bao-loop,hvac-loop")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6")
    ap.add_argument("--dyn", type=int, default=20)
    ap.add_argument("--dyn-ttl", default="20s")
    ap.add_argument("--dyn-max-ttl", default="60s")
    ap.add_argument("--dyn-grace", default="10s")
    ap.add_argument("--dyn-duration", type=float, default=45)
    ap.add_argument("--checker-rate", type=float, default=1.0)
    ap.add_argument("--checker-workers", type=int, default=16)
    ap.add_argument("--scale", default="1000,5000,10000")
    ap.add_argument("--scale-sample", type=int, default=200)
    ap.add_argument("--audit-lines", type=int, default=100000)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", required=True)
    ap.add_argument("--certus", required=True)
    ap.add_argument("--floor", required=True)
    ap.add_argument("--bao", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--bao-port", type=int, default=18300)
    ap.add_argument("--pg-port", type=int, default=15433)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.scenarios = set(args.scenarios.split(","))
    args.scale = [int(x) for x in args.scale.split(",") if x]

    work = args.work or tempfile.mkdtemp(prefix="certus-bench-")
    os.makedirs(work, exist_ok=True)
    svc = Services(args)
    results = {"mode": args.mode, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "git": subprocess.run(
                   ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                   text=True).stdout.strip()}
    try:
        if "1" in args.scenarios or "2" in args.scenarios:
            scenario_1_2(args, svc, work, results)
        if "3" in args.scenarios:
            scenario_3(args, svc, work, results)
        if "4" in args.scenarios:
            scenario_4(args, svc, work, results)
        if "5" in args.scenarios:
            scenario_5(args, svc, work, results)
        if "6" in args.scenarios:
            scenario_6(args, svc, work, results)
    finally:
        svc.stop_vault()
        results["load_at_end"] = loadavg()
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results["table_markdown"] = table(results)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(results["table_markdown"])
        log(f"figures: {args.out}; work dir: {work}")


if __name__ == "__main__":
    main()
