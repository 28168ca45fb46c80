#!/usr/bin/env python3
"""Checks deploy/ (run through scripts/check-deploy.sh, which provides the tools).

Each check prints one line; any failure is listed at the end and the exit status is 1.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ["dev", "prod"]
# Secrets the manifests read that nothing in them creates: made by an operator (CloudNativePG:
# caselog-db-app, caselog-db-ca; cert-manager: from a Certificate) or by the people deploying
# (named in the overlays' instructions).
SECRETS_MADE_ELSEWHERE = {
    "caselog-db-app": "CloudNativePG (the owner's credentials)",
    "caselog-db-ca": "CloudNativePG (the database server's CA)",
    "caselog-service-db-credentials": "the deployer (the service role's password)",
    "caselog-backup-s3": "the deployer (object storage for backups)",
}
ALLOWED_VOLUME_TYPES = {"configMap", "secret", "emptyDir", "projected", "downwardAPI",
                        "persistentVolumeClaim", "ephemeral", "csi"}

failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        failures.append(what)


def render(kubectl, overlay):
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)],
                         capture_output=True, text=True)
    check(out.returncode == 0, f"{overlay}: kustomize renders ({out.stderr.strip()[:300]})")
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, name_prefix=""):
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].startswith(name_prefix)]
    return found[0] if len(found) == 1 else None


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def check_restricted(overlay, workload):
    """The Pod Security Standards' "restricted" level, plus a read-only root filesystem."""
    name = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
    spec = pod_spec(workload)
    pod_ctx = spec.get("securityContext", {})
    check(not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), f"{name}: no host namespaces")
    volume_types = {key for v in spec.get("volumes", []) for key in v if key != "name"}
    check(volume_types <= ALLOWED_VOLUME_TYPES, f"{name}: volume types {sorted(volume_types)} allowed")
    check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
    for container in spec.get("initContainers", []) + spec["containers"]:
        ctx = container.get("securityContext", {})
        cname = f"{name} container {container['name']}"
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True
        user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        check(non_root and user not in (None, 0), f"{cname}: runs as a non-root user")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        check(seccomp in ("RuntimeDefault", "Localhost"), f"{cname}: seccomp profile RuntimeDefault")
        check(ctx.get("allowPrivilegeEscalation") is False, f"{cname}: no privilege escalation")
        check(not ctx.get("privileged"), f"{cname}: not privileged")
        caps = ctx.get("capabilities", {})
        check("ALL" in caps.get("drop", []) and set(caps.get("add", [])) <= {"NET_BIND_SERVICE"},
              f"{cname}: all capabilities dropped")
        check(ctx.get("readOnlyRootFilesystem") is True, f"{cname}: read-only root filesystem")
        resources = container.get("resources", {})
        check("memory" in resources.get("limits", {}) and "cpu" in resources.get("requests", {})
              and "memory" in resources.get("requests", {}), f"{cname}: requests and a memory limit")
        image = container.get("image", "")
        check(":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"{cname}: image {image} has a tag or digest")
        check(not image.endswith(":latest"), f"{cname}: image is not :latest")


def check_overlay(kubectl, validate, overlay):
    text, docs = render(kubectl, overlay)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as rendered:
        rendered.write(text)
    out = subprocess.run([validate, "--strict", "-k", "1.31.0", rendered.name], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    passed = [line for line in lines if " passed for resource " in line]
    unknown = sorted({line.split("kind ")[1].split(" with")[0] for line in lines if "Couldn't find schema" in line})
    check(out.returncode == 0 and not any(" ERROR " in l or " FAIL " in l for l in lines),
          f"{overlay}: {len(passed)} resources pass kubernetes-validate --strict (1.31)"
          + ("" if out.returncode == 0 else ":\n" + "\n".join(lines)))
    # Custom resources have no schema there; their fields are checked below.
    check(set(unknown) <= {"Cluster", "ScheduledBackup", "Certificate", "Issuer"},
          f"{overlay}: only operator resources lack a schema ({', '.join(unknown)})")

    deployment = one(docs, "Deployment", "caselog")
    job = one(docs, "Job", "caselog-migrate")
    check(deployment is not None and job is not None, f"{overlay}: one Deployment and one migration Job")
    if deployment is None or job is None:
        return
    for workload in (deployment, job):
        check_restricted(overlay, workload)
    spec = pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = spec["containers"][0]
    check(deployment["spec"]["replicas"] >= 2, f"{overlay}: at least two replicas")
    check(container["args"] == ["serve"], f"{overlay}: the Deployment serves")
    probes = (container.get("readinessProbe", {}).get("grpc", {}), container.get("livenessProbe", {}).get("grpc", {}))
    check(probes[0].get("port") == 8081 and probes[1] == {"port": 8081, "service": "liveness"},
          f"{overlay}: readiness and liveness on gRPC health of the plain-text port")
    init = spec.get("initContainers", [])
    check([c["args"][:2] for c in init] == [["migrate", "--check"]],
          f"{overlay}: pods only wait for migrations (migrate --check), never run them")
    check(job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "migrate",
          f"{overlay}: the Job migrates")
    pod_text = json.dumps(spec)
    check("caselog-db-app" not in pod_text, f"{overlay}: the owner's secret is not mounted into service pods")
    check("caselog-db-app" in json.dumps(job), f"{overlay}: the Job migrates as the owner")
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    check(env.get("DATABASE_URL", "").find("@caselog-db-rw:") > 0, f"{overlay}: writes go to the -rw service")
    if "CASELOG_READ_DATABASE_URL" in env:
        check("@caselog-db-ro:" in env["CASELOG_READ_DATABASE_URL"], f"{overlay}: reporting reads go to -ro")
    service = one(docs, "Service", "caselog")
    check(service is not None and service["spec"].get("clusterIP") == "None"
          and service["spec"]["selector"].items() <= labels.items(),
          f"{overlay}: the gRPC Service is headless (clients balance calls) and selects the pods")
    pdb = one(docs, "PodDisruptionBudget", "caselog")
    check(pdb is not None and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(),
          f"{overlay}: a PodDisruptionBudget covers the pods")
    hpa = one(docs, "HorizontalPodAutoscaler", "caselog")
    check(hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
          and hpa["spec"]["minReplicas"] >= 2, f"{overlay}: the autoscaler scales the Deployment from two")
    policies = [p for p in by_kind(docs, "NetworkPolicy")
                if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
    check(len(policies) == 1 and set(policies[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"},
          f"{overlay}: one NetworkPolicy limits the pods both ways")
    if policies:
        egress_ports = sorted(p["port"] for rule in policies[0]["spec"]["egress"] for p in rule["ports"])
        check(set(egress_ports) == {53, 4317, 5432}, f"{overlay}: egress only to DNS, the collector and PostgreSQL")
    config_maps = {c["metadata"]["name"] for c in by_kind(docs, "ConfigMap")}
    referenced_maps = {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v}
    referenced_maps |= {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
    check(referenced_maps <= config_maps, f"{overlay}: every ConfigMap the pods read is defined")
    certificates = {c["spec"]["secretName"] for c in by_kind(docs, "Certificate")}
    secrets = {v["secret"]["secretName"] for w in (deployment, job) for v in pod_spec(w).get("volumes", []) if "secret" in v}
    secrets |= {e["valueFrom"]["secretKeyRef"]["name"] for w in (deployment, job)
                for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", [])
                for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    unexplained = secrets - certificates - set(SECRETS_MADE_ELSEWHERE)
    check(not unexplained, f"{overlay}: every Secret read is made by cert-manager, the operator or the deployer {sorted(unexplained)}")
    cluster = one(docs, "Cluster", "caselog-db")
    check(cluster is not None and cluster["apiVersion"] == "postgresql.cnpg.io/v1", f"{overlay}: a CloudNativePG Cluster")
    if cluster is None:
        return
    check({"caselog_service"} == {r["name"] for r in cluster["spec"]["managed"]["roles"]},
          f"{overlay}: the cluster manages the service role")
    if overlay == "prod":
        sync = cluster["spec"]["postgresql"].get("synchronous", {})
        check(cluster["spec"]["instances"] >= 3 and sync.get("number", 0) >= 1
              and sync.get("dataDurability") == "required",
              f"{overlay}: three instances, an acknowledged commit is on a standby")
        check("barmanObjectStore" in cluster["spec"].get("backup", {}), f"{overlay}: WAL archiving and base backups")
        scheduled = one(docs, "ScheduledBackup")
        check(scheduled is not None and scheduled["spec"]["cluster"]["name"] == "caselog-db",
              f"{overlay}: a scheduled base backup of the cluster")
        check(not container["image"].endswith(":dev"), f"{overlay}: a release image")
        check("CASELOG_ALLOW_DEV_TOKENS" not in text, f"{overlay}: no development tokens")
    if overlay == "dev":
        tokens = next(c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("caselog-dev-tokens"))
        check(json.loads(tokens["data"]["dev-tokens.json"]) == json.loads((DEPLOY / "dev-tokens.json").read_text()),
              f"{overlay}: its development tokens are deploy/dev-tokens.json")


def check_compose():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for name, service in services.items():
        check("image" in service or "build" in service, f"compose: {name} has an image")
        depends = service.get("depends_on", {})
        check(set(depends) <= set(services), f"compose: {name} depends only on services that exist")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                check((DEPLOY / source).exists(), f"compose: {name} mounts {source}, which exists")
            else:
                check(source in compose.get("volumes", {}), f"compose: {name}'s volume {source} is declared")
    check("healthcheck" in services["caselog"] and "healthcheck" in services["postgres"],
          "compose: caselog and PostgreSQL have health checks")


def check_collector():
    config = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    for pipeline, parts in config["service"]["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            check(set(parts.get(section, [])) <= set(config.get(section, {})),
                  f"collector: pipeline {pipeline}'s {section} are configured")
    check(set(config["service"].get("extensions", [])) <= set(config.get("extensions", {})),
          "collector: its extensions are configured")
    check(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317"),
          "collector: OTLP/gRPC on 4317, where caselog sends")


def check_grafana():
    grafana = DEPLOY / "grafana"
    sources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    dashboard = json.loads((grafana / "dashboards" / "caselog.json").read_text())
    uids = {s["uid"] for s in sources["datasources"]}
    check(dashboard["templating"]["list"][0]["current"]["value"] in uids,
          "grafana: the dashboard's data source is provisioned")
    check(all(t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])),
          f"grafana: {len(dashboard['panels'])} panels, each query has an expression")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--validate", required=True)
    args = parser.parse_args()
    for overlay in OVERLAYS:
        check_overlay(args.kubectl, args.validate, overlay)
    check_compose()
    check_collector()
    check_grafana()
    if failures:
        print(f"\n{len(failures)} check(s) failed:", *failures, sep="\n  ")
        return 1
    print("\nall deploy checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
