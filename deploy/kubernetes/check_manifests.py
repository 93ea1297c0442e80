"""Consistency checks for deploy/kubernetes that a schema cannot see.

Run by deploy/kubernetes/validate (after kubernetes-validate has checked every manifest against
the Kubernetes schemas). Checks that the pieces agree with each other and with the sidecar:
the sidecar is a native sidecar with startup and liveness probes and no readiness probe, its
image is the one the Dockerfile builds (tag = Cargo.toml's version, same user), the config path
in the container's args is the mounted ConfigMap key, the admin port in sidecar.toml is the
probed port, the secret file and the state dir are the mounted Secret and PVC, the hardening is
in place, and the embedded sidecar.toml passes the real `wa-status-sidecar check`.

Usage: check_manifests.py DIR BINARY
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import tomllib
from urllib.parse import urlparse

import yaml

PASSED = []
FAILED = []


def check(condition, what):
    (PASSED if condition else FAILED).append(what)
    if not condition:
        print(f"FAIL: {what}", file=sys.stderr)


def load(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path}: expected one document, found {len(docs)}"
    return docs[0]


def main(directory, binary):
    directory = pathlib.Path(directory)
    kustomization = load(directory / "kustomization.yaml")
    resources = kustomization["resources"]
    check(
        sorted(resources) == ["configmap.yaml", "deployment.yaml", "pvc.yaml"],
        "kustomization lists the ConfigMap, the PVC and the Deployment (not the example Secret)",
    )
    configmap = load(directory / "configmap.yaml")
    pvc = load(directory / "pvc.yaml")
    deployment = load(directory / "deployment.yaml")
    secret = load(directory / "secret.example.yaml")

    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    containers = {c["name"]: c for c in pod["containers"]}
    init_containers = {c["name"]: c for c in pod.get("initContainers", [])}
    check(set(containers) == {"gateway"}, "one main container: the gateway")
    check(set(init_containers) == {"wa-status-sidecar"}, "the sidecar is an init container")
    sidecar = init_containers["wa-status-sidecar"]
    gateway = containers["gateway"]
    # A native sidecar (Kubernetes >= 1.29): runs for the pod's life, restarted on its own.
    check(sidecar.get("restartPolicy") == "Always", "the sidecar is a native sidecar (restartPolicy: Always)")
    # Readiness is per pod: a readiness probe on the sidecar would take the gateway's pod out of
    # its Services whenever the sidecar is not ready. The alert rules watch readiness instead.
    check("readinessProbe" not in sidecar, "no readiness probe gates the gateway's pod")
    check(deployment["spec"]["replicas"] == 1, "one replica (sessions and reports are not shared)")
    check(deployment["spec"]["strategy"]["type"] == "Recreate", "Recreate strategy (RWO state volume)")

    def mount_of(volume_kind, name_key, name):
        """The sidecar's mountPath of the volume of this kind referring to `name`."""
        for m in sidecar["volumeMounts"]:
            v = volumes.get(m["name"], {})
            if volume_kind in v and v[volume_kind].get(name_key) == name:
                return m
        return None

    # The config: args name a key of the ConfigMap, in the directory where it is mounted.
    args = sidecar["args"]
    check(args[:2] == ["run", "--config"], "the sidecar runs `run --config FILE`")
    config_path = pathlib.PurePosixPath(args[2])
    mount = mount_of("configMap", "name", configmap["metadata"]["name"])
    check(mount is not None and mount.get("readOnly") is True, "the ConfigMap is mounted read-only")
    check(
        mount is not None and str(config_path.parent) == mount["mountPath"],
        f"--config {config_path} is in the ConfigMap's mount",
    )
    check(config_path.name in configmap["data"], f"the ConfigMap has the key {config_path.name}")
    toml_text = configmap["data"][config_path.name]
    config = tomllib.loads(toml_text)

    # The gateway: reached on loopback, on the gateway container's port.
    gw = urlparse(config["gateway"]["url"].replace("{tenant}", "t"))
    check(gw.hostname == "127.0.0.1", "the gateway is reached on loopback (same pod)")
    check(
        gw.port in [p["containerPort"] for p in gateway.get("ports", [])],
        f"gateway.url port {gw.port} is a port of the gateway container",
    )

    # The admin API: the port of admin.listen is the container port the probes use.
    host, _, port = config["admin"]["listen"].rpartition(":")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    check(host == "0.0.0.0", "admin.listen is on the pod IP (kubelet probes do not use loopback)")
    check(ports.get("admin") == int(port), f"container port `admin` is admin.listen's port {port}")
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez")):
        http = sidecar.get(probe, {}).get("httpGet", {})
        check(http.get("path") == path and http.get("port") == "admin", f"{probe} GETs {path} on the admin port")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/port") == port, "the scrape annotation names the admin port")

    # The secret: backend.secret_file is the Secret's key in the Secret's mount.
    secret_file = pathlib.PurePosixPath(config["backend"]["secret_file"])
    mount = mount_of("secret", "secretName", secret["metadata"]["name"])
    check(mount is not None, "the Secret is mounted in the sidecar")
    check(
        mount is not None and str(secret_file.parent) == mount["mountPath"],
        "backend.secret_file is in the Secret's mount",
    )
    check(secret_file.name in secret["stringData"], f"the Secret has the key {secret_file.name}")
    mode = volumes[mount["name"]]["secret"].get("defaultMode") if mount else None
    check(mode is not None and mode & 0o007 == 0, "the secret file is not world-readable")

    # The state: state.dir is the PVC's mount.
    mount = mount_of("persistentVolumeClaim", "claimName", pvc["metadata"]["name"])
    check(
        mount is not None and mount["mountPath"] == config["state"]["dir"] and not mount.get("readOnly"),
        "state.dir is the writable mount of the PVC",
    )

    # The image: the one the repository's Dockerfile builds (README: `docker build -t
    # wa-status-sidecar:<version> .`), tagged with the crate's version, running as the user the
    # Dockerfile sets.
    repo = directory.resolve().parents[1]
    with open(repo / "Cargo.toml", "rb") as f:
        version = tomllib.load(f)["package"]["version"]
    check(sidecar["image"] == f"wa-status-sidecar:{version}", f"the sidecar's image is wa-status-sidecar:{version} (Cargo.toml's version)")
    images = {i["name"]: i for i in kustomization.get("images", [])}
    check(images.get("wa-status-sidecar", {}).get("newTag") == version, "kustomization's images entry has the same tag")
    # Instructions, with backslash-continued lines joined.
    dockerfile = (repo / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    sc = sidecar["securityContext"]
    check(
        users[-1:] == [f"{sc.get('runAsUser')}:{sc.get('runAsGroup')}"],
        f"the pod runs the sidecar as the Dockerfile's USER ({users[-1:]})",
    )
    check(
        any(line.startswith("HEALTHCHECK") and "healthcheck" in line for line in dockerfile),
        "the image's HEALTHCHECK uses the binary's healthcheck subcommand (/livez)",
    )

    # Hardening and sizing.
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "the sidecar runs as non-root")
    check(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "all capabilities dropped")
    check(pod["securityContext"].get("fsGroup") == sc.get("runAsGroup"), "fsGroup is the sidecar's group")
    check(sidecar["resources"]["requests"]["memory"] == "64Mi", "64Mi memory request (SPEC section 6)")
    check(pod["terminationGracePeriodSeconds"] > 10, "termination grace above the 10 s flush")
    check(config["log"]["format"] == "json", "JSON logs for the cluster's log shipper")

    # The embedded sidecar.toml through the real parser. Its absolute secret path does not exist
    # here, so that one path prefix is pointed at a temp dir holding a file mounted the way the
    # Deployment mounts it (mode 0440); nothing else is changed.
    with tempfile.TemporaryDirectory() as tmp:
        secret_dir = pathlib.Path(tmp, "secret")
        secret_dir.mkdir()
        secret_path = secret_dir / secret_file.name
        secret_path.write_text("validate-k8s-dummy-secret\n")
        secret_path.chmod(mode or 0o440)
        rewritten = toml_text.replace(str(secret_file.parent) + "/", str(secret_dir) + "/")
        check(rewritten != toml_text, "the secret path was rewritten for the check")
        toml_path = pathlib.Path(tmp, "sidecar.toml")
        toml_path.write_text(rewritten)
        # No secret in the environment: it must come from backend.secret_file.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        result = subprocess.run(
            [binary, "check", "--config", str(toml_path)],
            env=env, capture_output=True, text=True, timeout=30,
        )
        out = result.stdout + result.stderr
        check(result.returncode == 0, "`wa-status-sidecar check` accepts the ConfigMap's sidecar.toml")
        check("from backend.secret_file" in out, "check found the secret in backend.secret_file")
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        check(
            all("not a loopback address" in w for w in warnings),
            "check warns about nothing but the (intended) non-loopback admin.listen",
        )
        if result.returncode != 0 or FAILED:
            print(out, file=sys.stderr)

    print(f"k8s consistency: {len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
