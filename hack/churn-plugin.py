#!/usr/bin/env python3
"""Churn campaign for the trellis CNI plugin on one node.

500 pod identities, each with its own network namespace, are ADDed and
DELed at random by up to 32 workers in parallel inside one node namespace,
for DURATION seconds. Every plugin run is exec'd as a runtime does it (env +
config on stdin) under GNU time for its own max RSS, and reaped with wait4
for its CPU time.

Checked throughout: every run succeeds; no address is held by two live pods
(checked against the live set and the store record at each ADD); each DEL's
host veth disappears (the reaper did its work) within 10 s. Checked at the
end: the store holds no record and the node holds no trellis veth.

Prints per-minute p50/p99 of ADD and DEL wall and CPU time, max RSS per minute and the
load average, and writes everything to a JSON file.
  usage: churn-plugin.py PLUGIN DURATION_S [RESULT_JSON]
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

from cni_exec import NodeCampaign, del_netns, pct, plugin_env, report, run_campaign, setns

PLUGIN = sys.argv[1]
DURATION = float(sys.argv[2]) if len(sys.argv) > 2 else 600.0
RESULT = sys.argv[3] if len(sys.argv) > 3 else None
PODS = int(os.environ.get("CHURN_PODS", "500"))
WORKERS = int(os.environ.get("CHURN_PARALLEL", "32"))
# Live pods wander between these bounds; the node subnet is a /24 (253
# usable addresses), the Kubernetes default is 110 pods per node.
LIVE_MIN, LIVE_MAX = 16, 200
REAP_TIMEOUT = 10.0


class Campaign(NodeCampaign):
    def __init__(self):
        super().__init__("churn")
        self.lock = threading.Lock()
        self.state = {}          # identity -> idle | live | busy | cooling
        self.incarnation = [0] * PODS
        self.live_ip = {}        # ip -> identity
        self.cooling = []        # (identity, host veth, since)
        self.samples = []        # (t, verb, ms, maxrss_kb)
        self.failures = []
        self.duplicates = []
        self.leaks = []
        self.adds = self.dels = self.second_dels = 0
        self.max_live = 0
        self.veth_of = {}        # identity -> (ip, host veth) while live
        self.loadavg = []
        self.t0 = None

    def pod_ns(self, i):
        return f"{self.tag}-p{i}"

    def run(self, verb, i, netns=True):
        cid = f"{self.tag}-{i}-{self.incarnation[i]}"
        env = plugin_env(verb, cid, self.pod_ns(i) if netns else None, "churn", f"pod{i}")
        t = time.perf_counter()
        # GNU time forks the plugin from its own small process and reports
        # the plugin's max RSS. wait4 on our direct child cannot: a child
        # forked from this (large) Python process inherits its RSS high-water
        # mark across exec. wait4's CPU times do include the plugin's.
        p = subprocess.Popen(["/usr/bin/time", "-f", "maxrss_kb=%M", PLUGIN], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(self.conf)
        p.stdin.close()
        out = p.stdout.read()
        err = p.stderr.read().decode(errors="replace")
        p.stdout.close()
        p.stderr.close()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        ms = (time.perf_counter() - t) * 1000
        cpu_ms = (ru.ru_utime + ru.ru_stime) * 1000
        rss = next((int(ln.split("=", 1)[1]) for ln in err.splitlines() if ln.startswith("maxrss_kb=")), 0)
        with self.lock:
            self.samples.append((time.monotonic() - self.t0, verb, ms, rss, cpu_ms))
        if p.returncode != 0:
            self.fail(f"{verb} {cid}: exit {p.returncode}: {out.decode(errors='replace')}")
            return None
        return cid, out

    def fail(self, msg):
        with self.lock:
            self.failures.append(msg)
        print("FAIL", msg, file=sys.stderr, flush=True)

    def add(self, i):
        self.incarnation[i] += 1
        r = self.run("ADD", i)
        if r is None:
            return "idle"
        cid, out = r
        try:
            res = json.loads(out)
            ip = next(a["address"].split("/")[0] for a in res["ips"] if ":" not in a["address"])
            veth = res["interfaces"][1]["name"]
        except (ValueError, KeyError, StopIteration, IndexError) as e:
            self.fail(f"ADD {cid}: bad result {e}: {out!r}")
            return "idle"
        try:
            with open(os.path.join(self.store, ip), newline="") as f:
                rec = f.read()
        except OSError as e:
            rec = f"<{e}>"
        with self.lock:
            self.adds += 1
            if ip in self.live_ip:
                self.duplicates.append((ip, self.live_ip[ip], i))
                print(f"DUPLICATE {ip}: pod{self.live_ip[ip]} and pod{i}", file=sys.stderr, flush=True)
            self.live_ip[ip] = i
            self.veth_of[i] = (ip, veth)
            self.max_live = max(self.max_live, len(self.live_ip))
        if rec != f"{cid}\r\neth0":
            self.fail(f"ADD {cid}: store record for {ip} is {rec!r}")
        return "live"

    def delete(self, i):
        with self.lock:
            ip, veth = self.veth_of.pop(i)
            # The address is free from the moment DEL releases it, before
            # DEL returns: the pod stops being live now.
            if self.live_ip.get(ip) == i:
                del self.live_ip[ip]
        if self.run("DEL", i) is None:
            return "cooling", veth
        with self.lock:
            self.dels += 1
        # containerd sends a second DEL without a netns on sandbox removal.
        if random.random() < 0.1 and self.run("DEL", i, netns=False) is not None:
            with self.lock:
                self.second_dels += 1
        return "cooling", veth

    def worker(self, deadline):
        setns(self.node)
        rnd = random.Random()
        while time.monotonic() < deadline:
            with self.lock:
                idle = [i for i, s in self.state.items() if s == "idle"]
                live = [i for i, s in self.state.items() if s == "live"]
                n_live = len(self.live_ip)
                if idle and (n_live < LIVE_MIN or (n_live < LIVE_MAX and rnd.random() < 0.5) or not live):
                    i, verb = rnd.choice(idle), "ADD"
                elif live:
                    i, verb = rnd.choice(live), "DEL"
                else:
                    i = None
                if i is not None:
                    self.state[i] = "busy"
            if i is None:
                time.sleep(0.01)
                continue
            if verb == "ADD":
                new = self.add(i)
                with self.lock:
                    self.state[i] = new
            else:
                new, veth = self.delete(i)
                with self.lock:
                    self.state[i] = new
                    self.cooling.append((i, veth, time.monotonic()))

    def janitor(self, stop):
        """Returns cooled identities to idle once the reaper removed their veth."""
        setns(self.node)
        while True:
            done = stop.is_set()
            present = {n for _, n in socket.if_nameindex()}
            now = time.monotonic()
            with self.lock:
                keep = []
                for i, veth, since in self.cooling:
                    if veth not in present:
                        self.state[i] = "idle"
                    elif now - since > REAP_TIMEOUT:
                        self.leaks.append(veth)
                        print(f"LEAK host veth {veth} of pod{i} still there {REAP_TIMEOUT}s after DEL", file=sys.stderr, flush=True)
                        subprocess.run(["ip", "link", "del", veth], stderr=subprocess.DEVNULL)
                        self.state[i] = "idle"
                    else:
                        keep.append((i, veth, since))
                self.cooling = keep
                empty = not keep
            if done and empty:
                return
            time.sleep(0.05)

    def minute_sampler(self, stop):
        while not stop.wait(60):
            la = open("/proc/loadavg").read().split()[:3]
            with self.lock:
                self.loadavg.append((round(time.monotonic() - self.t0), la))
                print(f"t={time.monotonic() - self.t0:5.0f}s ADD={self.adds} DEL={self.dels} live={len(self.live_ip)} "
                      f"failures={len(self.failures)} dup={len(self.duplicates)} load={' '.join(la)}", flush=True)

    def main(self):
        subprocess.run(["ip", "netns", "add", self.node], check=True)
        subprocess.run(["ip", "-n", self.node, "link", "set", "lo", "up"], check=True)
        for i in range(PODS):
            subprocess.run(["ip", "netns", "add", self.pod_ns(i)], check=True)
            self.state[i] = "idle"
        load_start = open("/proc/loadavg").read().split()[:3]
        print(f"churn: {PODS} pod identities, {WORKERS} workers, {DURATION:.0f}s, load at start {' '.join(load_start)}", flush=True)
        self.t0 = time.monotonic()
        deadline = self.t0 + DURATION
        stop_janitor, stop_sampler = threading.Event(), threading.Event()
        jan = threading.Thread(target=self.janitor, args=(stop_janitor,))
        sam = threading.Thread(target=self.minute_sampler, args=(stop_sampler,), daemon=True)
        jan.start()
        sam.start()
        workers = [threading.Thread(target=self.worker, args=(deadline,)) for _ in range(WORKERS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        churn_end = time.monotonic() - self.t0
        # Drain: DEL whatever is still live, as a runtime tearing the node down.
        setns(self.node)
        for i in [i for i, s in self.state.items() if s == "live"]:
            _, veth = self.delete(i)
            with self.lock:
                self.state[i] = "cooling"
                self.cooling.append((i, veth, time.monotonic()))
        stop_janitor.set()
        jan.join()
        stop_sampler.set()
        load_end = open("/proc/loadavg").read().split()[:3]

        records = sorted(n for n in os.listdir(self.store) if n not in ("lock",) and not n.startswith("last_reserved_ip."))
        links = [n for _, n in socket.if_nameindex()]
        trl = [n for n in links if n.startswith("trl")]
        pod_links = []
        for i in range(PODS):
            out = subprocess.run(["ip", "-n", self.pod_ns(i), "-o", "link", "show"], capture_output=True, text=True).stdout
            extra = [ln.split(":")[1].strip() for ln in out.splitlines() if ln.split(":")[1].strip() != "lo"]
            if extra:
                pod_links.append((i, extra))
        self.report(churn_end, load_start, load_end, records, links, trl, pod_links)
        ok = not (self.failures or self.duplicates or self.leaks or records or trl or pod_links)
        print("RESULT:", "PASS" if ok else "FAIL", flush=True)
        return 0 if ok else 1

    def report(self, churn_end, load_start, load_end, records, links, trl, pod_links):
        minutes = max(1, int((churn_end + 59) // 60))
        rows = []
        for m in range(minutes):
            row = {"minute": m + 1}
            for verb in ("ADD", "DEL"):
                xs = [s for s in self.samples if s[1] == verb and m * 60 <= s[0] < (m + 1) * 60]
                row[verb] = {"n": len(xs), "p50_ms": round(pct([s[2] for s in xs], .5), 2),
                             "p99_ms": round(pct([s[2] for s in xs], .99), 2),
                             "cpu_p50_ms": round(pct([s[4] for s in xs], .5), 2),
                             "cpu_p99_ms": round(pct([s[4] for s in xs], .99), 2),
                             "max_rss_kb": max((s[3] for s in xs), default=0),
                             "p50_rss_kb": pct([s[3] for s in xs], .5) if xs else 0}
            rows.append(row)
        print("\nper minute: wall time of the exec as a runtime sees it (p50/p99), CPU time of the"
              " plugin (p50/p99), max RSS of any run (ms, KiB)")
        print(f"{'min':>3} | {'ADD n':>5} {'p50':>6} {'p99':>6} {'cpu50':>5} {'cpu99':>5} {'maxRSS':>6} | "
              f"{'DEL n':>5} {'p50':>6} {'p99':>6} {'cpu50':>5} {'cpu99':>5} {'maxRSS':>6}")
        for r in rows:
            a, d = r["ADD"], r["DEL"]
            print(f"{r['minute']:>3} | {a['n']:>5} {a['p50_ms']:>6.1f} {a['p99_ms']:>6.1f} {a['cpu_p50_ms']:>5.1f} "
                  f"{a['cpu_p99_ms']:>5.1f} {a['max_rss_kb']:>6} | {d['n']:>5} {d['p50_ms']:>6.1f} {d['p99_ms']:>6.1f} "
                  f"{d['cpu_p50_ms']:>5.1f} {d['cpu_p99_ms']:>5.1f} {d['max_rss_kb']:>6}")
        summary = {
            "pods": PODS, "parallel": WORKERS, "duration_s": round(churn_end, 1),
            "adds": self.adds, "dels": self.dels, "second_dels_without_netns": self.second_dels,
            "max_live": self.max_live, "failures": self.failures, "duplicates": self.duplicates,
            "reaper_leaks": self.leaks, "store_left": records, "trellis_links_left": trl,
            "node_links_at_end": links, "pod_links_left": pod_links,
            "load_start": load_start, "load_end": load_end, "load_per_minute": self.loadavg,
            "per_minute": rows,
        }
        report(summary, RESULT, "per_minute")

    def cleanup(self):
        del_netns(self.node, *(self.pod_ns(i) for i in range(PODS)))
        shutil.rmtree(self.tmp, ignore_errors=True)


if __name__ == "__main__":
    run_campaign(Campaign)
