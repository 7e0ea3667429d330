//! Deployment files checked against real tools and the real binary:
//! hadolint on the Dockerfile, kubernetes-validate (strict) on the
//! manifests, cross-references of the kinds it has no schema for, the
//! ConfigMap's configuration and the image's environment accepted by
//! `postern check-config`, the HEALTHCHECK command against a live daemon,
//! and every metric the Grafana dashboard queries present in a live scrape.

mod common;

use common::tools::{self, Package, HADOLINT, KUBERNETES_VALIDATE, PYTHON3};
use common::{certs, Gateway};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, which must succeed; returns what it printed.
fn run(cmd: &mut Command, what: &str) -> String {
    tools::output_text(&tools::run_ok(cmd, what))
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn dockerfile_passes_hadolint() {
    run(
        HADOLINT.command().arg(root().join("deploy/Dockerfile")),
        "hadolint",
    );
}

/// Checks, in Python with PyYAML, what kubernetes-validate has no schema
/// for (Kustomization, ServiceMonitor) and the wiring between the files
/// (resources, probes and ports, volumes, selectors, the scrape token);
/// prints the ConfigMap's postern.toml.
const CROSS_CHECK: &str = r#"
import sys, yaml, glob, os
d = sys.argv[1]
docs = [x for f in sorted(glob.glob(d + "/*.yaml")) for x in yaml.safe_load_all(open(f)) if x]
by = {(x["kind"], x.get("metadata", {}).get("name")): x for x in docs}
kust = by[("Kustomization", None)]
files = {os.path.basename(f) for f in glob.glob(d + "/*.yaml")} - {"kustomization.yaml"}
assert set(kust["resources"]) == files, ("kustomization resources", kust["resources"], files)
sts = by[("StatefulSet", "postern")]
pod = sts["spec"]["template"]
c = pod["spec"]["containers"][0]
ports = {p["name"] for p in c["ports"]}
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    assert c[probe]["httpGet"]["port"] in ports, probe
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert c["lifecycle"]["preStop"]["exec"]["command"]
assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["spec"]["volumes"]}
for v in vols.values():
    if "secret" in v:
        assert ("Secret", v["secret"]["secretName"]) in by, v
    if "configMap" in v:
        assert ("ConfigMap", v["configMap"]["name"]) in by, v
labels = pod["metadata"]["labels"]
for (kind, name), x in by.items():
    if kind == "Service":
        assert all(labels.get(k) == v for k, v in x["spec"]["selector"].items()), name
        assert all(p["targetPort"] in ports for p in x["spec"]["ports"]), name
pdb = by[("PodDisruptionBudget", "postern")]
assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
sm = by[("ServiceMonitor", "postern")]
admin = [x for (k, n), x in by.items() if k == "Service" and all(x["metadata"]["labels"].get(a) == b for a, b in sm["spec"]["selector"]["matchLabels"].items())]
assert len(admin) == 1, "ServiceMonitor selects exactly one Service"
assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in admin[0]["spec"]["ports"]}
tok = sm["spec"]["endpoints"][0]["bearerTokenSecret"]
assert tok["key"] in by[("Secret", tok["name"])]["stringData"]
sys.stdout.write(by[("ConfigMap", "postern-config")]["data"]["postern.toml"])
"#;

#[test]
fn manifests_validate_and_reference_each_other() {
    let text = run(
        KUBERNETES_VALIDATE
            .command()
            .arg("--strict")
            .args(manifests()),
        "kubernetes-validate",
    );
    assert!(!text.contains("ERROR"), "{text}");
    // Kinds without a schema there, and the wiring between files (PyYAML
    // comes with kubernetes-validate).
    tools::require_python_module("yaml", Package::PyPI("PyYAML"));
    let toml = run(
        PYTHON3
            .command()
            .args(["-c", CROSS_CHECK])
            .arg(root().join("deploy/kubernetes")),
        "manifest cross-check (python3 with PyYAML)",
    );
    // The ConfigMap's configuration is one Postern accepts, with the mounted
    // Secret files (certificate, token) where the pod would have them.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    certs::self_signed_at(
        &dir.path().join("tls.key"),
        &dir.path().join("tls.crt"),
        "postern",
    );
    std::fs::write(dir.path().join("admin-token"), "t0ken\n").unwrap();
    assert!(toml.contains("/etc/postern/tls/") && toml.contains("/etc/postern/secret/"));
    let toml = toml
        .replace("/etc/postern/tls/", &format!("{d}/"))
        .replace("/etc/postern/secret/", &format!("{d}/"));
    let cfg = dir.path().join("postern.toml");
    std::fs::write(&cfg, toml).unwrap();
    run(
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["check-config", "--config"])
            .arg(&cfg),
        "check-config on the ConfigMap",
    );
}

/// `ENV` assignments of the Dockerfile's runtime stage.
fn dockerfile_env(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines().filter(|l| l.starts_with("ENV ")) {
        let mut rest = &line[4..];
        while let Some(eq) = rest.find('=') {
            let key = rest[..eq].trim().to_string();
            let after = rest[eq + 1..].trim_start();
            let (value, next) = match after.strip_prefix('\'') {
                Some(q) => {
                    let end = q.find('\'').unwrap();
                    (q[..end].to_string(), &q[end + 1..])
                }
                None => {
                    let end = after.find(' ').unwrap_or(after.len());
                    (after[..end].to_string(), &after[end..])
                }
            };
            out.push((key, value));
            rest = next;
        }
    }
    out
}

#[test]
fn image_environment_and_healthcheck_work() {
    let env = dockerfile_env(&root().join("deploy/Dockerfile"));
    assert!(
        env.iter().any(|(k, _)| k == "POSTERN__QUEUE__PATH"),
        "{env:?}"
    );
    // The shipped configuration plus the image's overrides is valid.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["check-config", "--config"])
            .arg(root().join("config/postern.toml"))
            .envs(env.iter().map(|(k, v)| (k, v))),
        "check-config with the image environment",
    );
    assert!(out.contains("+ environment (POSTERN__"), "{out}");
    // The HEALTHCHECK command answers for a running daemon, and fails for none.
    let gw = Gateway::start("", "");
    let cfg = gw.config.display().to_string();
    let ok = gw.cli(&["health", "--config", &cfg]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(gw
        .cli(&["health", "--ready", "--config", &cfg])
        .status
        .success());
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.toml");
    std::fs::write(&none, "[admin]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let bad = gw.cli(&["health", "--config", &none.display().to_string()]);
    assert!(!bad.status.success());
}

#[test]
fn dashboard_queries_only_metrics_that_exist() {
    let text =
        std::fs::read_to_string(root().join("deploy/kubernetes/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut wanted = std::collections::BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("postern_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                wanted.insert(name);
            }
        }
    }
    assert!(wanted.len() > 15, "{wanted:?}");
    let gw = Gateway::start("", "");
    let scrape = gw.admin_get("/metrics");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| {
            !scrape.contains(&format!("# TYPE {m} ")) && !scrape.contains(&format!("{m}{{"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard uses unknown metrics: {missing:?}"
    );
}
