//! What `deploy/` ships is checked as it would be applied: `scripts/check-deploy.sh` renders
//! both kustomize overlays, validates every core resource against Kubernetes' schemas, checks
//! the pods against the Pod Security "restricted" level and the promises of
//! docs/operations.md, and parses the compose file, the collector config and the Grafana
//! provisioning. (The Prometheus rules and the dashboard's series: tests/api/observability.rs.)

#[test]
fn the_deployment_manifests_and_configs_are_valid() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-deploy.sh");
    let run = std::process::Command::new(script).output().unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(said.contains("all deploy checks passed"), "{said}");
    assert!(said.matches("\nok ").count() >= 100, "{said}");
}
