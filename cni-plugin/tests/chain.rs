//! Privileged: trellis as the first plugin of a conflist, with the reference
//! `portmap` plugin (Debian's containernetworking-plugins) chained after it,
//! invoked the way libcni does: portmap gets trellis's result as prevResult.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PORTMAP: &str = "/usr/lib/cni/portmap";

fn portmap_conf(version: &str, prev: Option<&Value>) -> String {
    let mut c = json!({
        "cniVersion": version,
        "name": "cbr0",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c.to_string()
}

fn portmap(node: &Node, cmd: &str, pod: &Netns, conf: &str) -> Outcome {
    node.run_plugin(PORTMAP, cmd, "web", pod, conf)
}

/// A one-shot TCP server in the pod that answers "hello from the pod".
fn serve_once(pod: &Netns) -> std::process::Child {
    let script = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(1)\nprint('ready',flush=True)\nc,_=s.accept()\nc.sendall(b'hello from the pod')\nc.close()\n";
    Command::new("ip")
        .args(["netns", "exec", &pod.name, "python3", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server")
}

fn fetch(from: &Netns, host: &str, port: u16) -> Option<String> {
    let script = format!(
        "import socket\ns=socket.create_connection(('{host}',{port}),timeout=3)\nprint(s.recv(100).decode())\n"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (ok, out) = from.output(&["python3", "-c", &script]);
        if ok {
            return Some(out.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn portmap_chained_after_trellis_forwards_a_host_port() {
    assert!(
        std::path::Path::new(PORTMAP).exists(),
        "install containernetworking-plugins"
    );
    let node = Node::new("chain", SUBNET_ENV);
    let web = netns("web");
    let client = netns("cli");
    for version in ["0.4.0", "1.0.0"] {
        let conf = node.conf(version, "");
        let add = node.add("web", &web, &conf);
        assert!(
            node.cni("ADD", "client", Some(&client.path()), "eth0", &conf)
                .ok
        );
        let prev = add.json();
        let pm = portmap(&node, "ADD", &web, &portmap_conf(version, Some(&prev)));
        assert!(pm.ok, "portmap ADD ({version}): {}", pm.stdout);
        // portmap passes our result on unchanged.
        assert_eq!(pm.json()["ips"], prev["ips"], "{version}");

        let mut server = serve_once(&web);
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(server.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server ready");
        let got = fetch(&client, "10.244.1.1", 18080);
        let _ = server.kill();
        let _ = server.wait();
        assert_eq!(
            got.as_deref(),
            Some("hello from the pod"),
            "{version}: hostPort DNAT did not reach the pod"
        );

        // CHECK of the whole chain in the version that has it.
        let mut check_conf: Value = serde_json::from_str(&conf).unwrap();
        check_conf["prevResult"] = pm.json();
        let check = node.cni(
            "CHECK",
            "web",
            Some(&web.path()),
            "eth0",
            &check_conf.to_string(),
        );
        assert!(check.ok, "{}", check.stdout);

        // Teardown in reverse order, as libcni does.
        assert!(portmap(&node, "DEL", &web, &portmap_conf(version, Some(&prev))).ok);
        assert!(node.cni("DEL", "web", Some(&web.path()), "eth0", &conf).ok);
        assert!(
            node.cni("DEL", "client", Some(&client.path()), "eth0", &conf)
                .ok
        );
        let (_, rules) = node.ns.output(&["iptables-save", "-t", "nat"]);
        assert!(
            !rules.contains("dport 18080"),
            "portmap rules left behind: {rules}"
        );
        assert!(node.ipam_records().is_empty());
    }
}
