"""What cannot run here without a container engine, linted and cross-checked.

- ``deploy/Dockerfile``: hadolint; its commands are nexus's own (the entrypoint, the
  health check), its build context holds what it copies, and the wheel it builds (the
  same command, on the same ``.dockerignore``-filtered context) carries the host, the
  contracts and the bundled plugins.
- ``deploy/kubernetes/``: every manifest validated strictly against a pinned Kubernetes
  version's schemas; ports, probes, timings and security settings agree with each other
  and with the ``nexus.toml`` the ConfigMap holds.
- ``deploy/compose.yaml``: parsed, every file it references exists, every service has a
  health check, the balancer's backends are the nexus services on their ports.
- Every ``nexus.toml`` shipped (image, compose, ConfigMap) loads with nexus's own config
  loader, with the ``NEXUS_*`` variables the deployment sets: no drift.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import yaml

from nexus_grpc.cli import _parser
from nexus_grpc.config import Config, load_config
from tests.e2e.conftest import BIN, REPO, missing, require_tool
from tests.fixtures.ports import free_port

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
#: The oldest Kubernetes the manifests support (native sleep preStop: 1.30+).
KUBERNETES_VERSION = "1.31.0"


# -- Dockerfile ------------------------------------------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        found.append((keyword.upper(), " ".join(rest.split())))
    return found


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (ENTRYPOINT, CMD)."""
    value = yaml.safe_load(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    return [str(part) for part in value]


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that runs)."""
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def env_values(steps: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, arguments in steps:
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def test_hadolint_passes_the_dockerfile_and_catches_a_bad_one(tmp_path: Path) -> None:
    hadolint = require_tool("hadolint", BIN / "hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter really reads the file: a Dockerfile with well-known mistakes fails.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    failed = subprocess.run(
        [hadolint, str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert failed.returncode != 0
    assert "DL3007" in failed.stdout  # the :latest tag


def test_the_image_runs_nexus_unprivileged_read_only_and_drains_on_sigterm() -> None:
    steps = runtime_stage()
    keywords = dict(steps)
    image_toml = load_config(DEPLOY / "nexus.toml", environ={})
    # The entrypoint and the health check are commands of this nexus.
    command = [*exec_form(keywords["ENTRYPOINT"]), *exec_form(keywords["CMD"])]
    assert command[0] == "nexus"
    assert _parser().parse_args(command[1:]).run.__module__ == "nexus_grpc.cli.serve"
    check = keywords["HEALTHCHECK"].split(" CMD ", 1)[1]
    probe = exec_form(check)
    assert probe[0] == "nexus"
    assert _parser().parse_args(probe[1:]).run.__module__ == "nexus_grpc.cli.health"
    # Liveness, not the overall status: a storage outage must not replace the container.
    assert probe[probe.index("--service") + 1] == "nexus.liveness"
    assert keywords["STOPSIGNAL"] == "SIGTERM"
    # A fixed numeric uid (runAsNonRoot can check it), the one the Deployment names.
    args = {a.split("=")[0]: a.split("=")[1] for k, a in steps if k == "ARG" and "=" in a}
    uid = keywords["USER"].replace("${NEXUS_UID}", args["NEXUS_UID"]).split(":")[0]
    deployment = manifest("deployment.yaml")
    assert int(uid) == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert int(uid) > 0
    env = env_values(steps)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["NEXUS_CONFIG"] == "/etc/nexus/nexus.toml"
    # Writable places are volumes or tmpfs: the data dir and TMPDIR.
    assert keywords["VOLUME"] == f'["{image_toml.data_dir}"]'
    assert env["TMPDIR"] == "/tmp"
    exposed = {int(port) for port in keywords["EXPOSE"].split()}
    assert exposed == {port_of(image_toml.server.grpc_address), port_of(image_toml.http.address)}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _pattern_regex(line: str) -> re.Pattern[str]:
    """One ``.dockerignore`` pattern as a regular expression on context-relative paths."""
    regex = ""
    index = 0
    while index < len(line):
        if line.startswith("**/", index):
            regex += "(?:.*/)?"
            index += 3
        elif line.startswith("**", index):
            regex += ".*"
            index += 2
        elif line[index] == "*":
            regex += "[^/]*"
            index += 1
        elif line[index] == "?":
            regex += "[^/]"
            index += 1
        elif line[index] == "[":
            end = line.index("]", index)
            regex += line[index : end + 1]
            index = end + 1
        else:
            regex += re.escape(line[index])
            index += 1
    return re.compile(regex + "$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """The root ``.dockerignore``, in order: (is an exception ``!...``, pattern)."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(line.removeprefix("!").strip().strip("/"))))
    return rules


def dockerignored(path: str, rules: list[tuple[bool, re.Pattern[str]]] | None = None) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule that
    matches the path or one of its parent folders decides (an ``!`` rule keeps it)."""
    rules = dockerignore_rules() if rules is None else rules
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, pattern in rules:
        if any(pattern.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def copy_context(target: Path) -> None:
    """The build context Docker would send: the repository less ``.dockerignore``."""
    rules = dockerignore_rules()
    exceptions = [pattern.pattern for negated, pattern in rules if negated]

    def ignored(directory: str, names: list[str]) -> list[str]:
        base = Path(directory).relative_to(REPO)
        left_out = []
        for name in names:
            path = (base / name).as_posix().removeprefix("./")
            if not dockerignored(path, rules):
                continue
            # A folder left out may still hold an exception (deploy/ for deploy/nexus.toml):
            # Docker walks into it, so must the copy.
            if (REPO / path).is_dir() and any(
                e.startswith(re.escape(path + "/")) for e in exceptions
            ):
                continue
            left_out.append(name)
        return left_out

    shutil.copytree(REPO, target, ignore=ignored)


def test_the_dockerignore_allow_list_keeps_the_sources_and_leaves_the_rest_out() -> None:
    rules = dockerignore_rules()
    assert rules[0] == (False, re.compile("[^/]*$")), "an allow-list starts with `*`"
    for kept in ("nexus_grpc/host.py", "plugins/orders/manifest.toml", "deploy/nexus.toml"):
        assert not dockerignored(kept, rules), kept
    for left_out in (
        ".git/config",
        ".venv/bin/python",
        "tests/deploy/test_lint_deploy.py",
        "deploy/compose.yaml",
        "deploy/.env",
        "nexus_grpc/__pycache__/host.cpython-311.pyc",
        "a-new-file-nobody-listed.txt",
    ):
        assert dockerignored(left_out, rules), left_out


def test_the_build_context_holds_what_the_dockerfile_copies(tmp_path: Path) -> None:
    context = tmp_path / "context"
    copy_context(context)
    assert not (context / ".git").exists() and not (context / ".venv").exists()
    assert not (context / "tests").exists() and not (context / "deploy" / "compose.yaml").exists()
    assert not list(context.rglob("__pycache__"))
    for keyword, arguments in runtime_stage():
        if keyword == "COPY" and not arguments.startswith("--from"):
            source = arguments.split()[0]
            assert (context / source).is_file(), f"COPY {source}: not in the build context"
    # The builder's steps need the package sources and the pins.
    for needed in ("pyproject.toml", "setup.py", "constraints.txt", "generated", "plugins"):
        assert (context / needed).exists(), needed


def test_the_wheel_built_as_the_dockerfile_builds_it_carries_the_product(tmp_path: Path) -> None:
    steps = instructions()
    (build,) = [a for k, a in steps if k == "RUN" and " pip wheel " in f" {a} "]
    context = tmp_path / "context"
    copy_context(context)
    dist = tmp_path / "dist"
    # The Dockerfile's command, with this interpreter and a local output folder.
    argv = shlex.split(build)
    assert argv[:2] == ["python", "-m"]
    argv = [sys.executable, *argv[1:]]
    argv[argv.index("--wheel-dir") + 1] = str(dist)
    result = subprocess.run(
        argv, cwd=context, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("nexus_grpc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "nexus_grpc/cli/health.py",
        "nexus_grpc/gateway/probes.py",
        "nexus_grpc/bundled/orders/manifest.toml",
        "nexus_grpc/bundled/inventory/manifest.toml",
        "nexus/orders/v1/orders_pb2.py",
    ):
        assert expected in names, expected
    # The console script the image's ENTRYPOINT runs.
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "nexus = nexus_grpc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# -- Kubernetes ------------------------------------------------------------------------


def documents(name: str) -> list[dict[str, Any]]:
    """Every object of a manifest file (``---``-separated)."""
    loaded = [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in loaded)
    return loaded


def manifest(name: str) -> dict[str, Any]:
    """The first object of a manifest file."""
    return documents(name)[0]


def manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kubernetes_validate_accepts_every_manifest_strictly_and_rejects_a_typo(
    tmp_path: Path,
) -> None:
    validate = require_tool("kubernetes-validate", BIN / "kubernetes-validate")
    files = [str(p) for p in manifests()]
    result = subprocess.run(
        [validate, "--strict", "-k", KUBERNETES_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    objects = sum(len(documents(Path(f).name)) for f in files)
    assert result.stdout.count("passed") == objects, result.stdout
    # Strict really is strict: an unknown field (a typo) fails.
    broken = (KUBERNETES / "service.yaml").read_text().replace("appProtocol:", "appProtocl:")
    typo = tmp_path / "service.yaml"
    typo.write_text(broken)
    failed = subprocess.run(
        [validate, "--strict", "-k", KUBERNETES_VERSION, str(typo)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode != 0


def test_the_kustomization_lists_every_manifest_but_the_examples() -> None:
    kustomization = manifest("kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifests() if not p.name.endswith(".example.yaml")}


def configmap_toml(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(manifest("configmap.yaml")["data"]["nexus.toml"])
    return path


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's NEXUS_* variables; those from a Secret get a placeholder value
    of the right shape."""
    placeholders = {
        "storage-url": "postgresql+asyncpg://nexus@db.invalid/nexus",
        "redis-events-url": "redis://:secret@redis.invalid/0",
        "redis-cache-url": "redis://:secret@redis.invalid/1",
        "redis-limits-url": "redis://:secret@redis.invalid/2",
    }
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = placeholders[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_the_deployment_agrees_with_its_config_and_is_locked_down(tmp_path: Path) -> None:
    deployment = manifest("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = container_env(container)
    config = load_config(configmap_toml(tmp_path), environ=env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": port_of(config.server.grpc_address),
        "http": port_of(config.http.address),
    }
    # Native gRPC probes on the host's liveness and readiness health services.
    for probe, service in (
        ("readinessProbe", "nexus.readiness"),
        ("startupProbe", "nexus.readiness"),
        ("livenessProbe", "nexus.liveness"),
    ):
        assert container[probe]["grpc"] == {"port": ports["grpc"], "service": service}, probe
    # The autoscaler owns the replica count.
    assert "replicas" not in deployment["spec"]
    # Workers: one core requested per worker; more than one needs Redis for limits,
    # events and cache, which the config (with the Secret's URLs) has.
    args = container["args"]
    assert _parser().parse_args(args).run.__module__ == "nexus_grpc.cli.serve"
    workers = int(args[args.index("--workers") + 1])
    assert workers >= 2
    assert float(container["resources"]["requests"]["cpu"]) == workers
    load_config(configmap_toml(tmp_path), environ={**env, "NEXUS_SERVER__WORKERS": str(workers)})
    for part in ("events", "cache", "limits"):
        assert getattr(config, part).redis_url.startswith("redis://:secret@"), part
        assert "redis_url" not in manifest("configmap.yaml")["data"]["nexus.toml"]
    # Clients reconnect every few minutes: load spreads over pods the autoscaler adds.
    assert 60 <= config.server.max_connection_age <= 900
    # The pod is given time for the preStop sleep, readiness settling and the drain.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + config.server.shutdown_delay + config.server.grace_period
    assert pod["terminationGracePeriodSeconds"] > needed
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < (
        pre_stop + config.server.shutdown_delay
    )
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # Writable: the data dir and /tmp, each an emptyDir; config and secrets read-only.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # data_dir is a subdirectory of its volume, which fsGroup makes group-writable:
    # nexus creates it owner-only (test_fsgroup).
    data_mount = str(Path(config.data_dir).parent)
    for writable in (data_mount, "/tmp"):
        assert "emptyDir" in volumes[mounts[writable]["name"]]
    assert mounts["/etc/nexus"]["readOnly"] is True
    assert Path(config.auth.secret_file).parent.as_posix() in mounts
    assert env["NEXUS_CONFIG"] == "/etc/nexus/nexus.toml"
    # Events, cache and rate limits shared across pods.
    assert (config.events.backend, config.cache.backend, config.limits.backend) == (
        "redis",
        "redis",
        "redis",
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_pdb_and_autoscaler_point_at_the_deployment() -> None:
    deployment = manifest("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    service = manifest("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: p["appProtocol"] for n, p in by_name.items()} == {
        "grpc": "kubernetes.io/h2c",
        "http": "http",
    }
    # The headless Service: DNS lists every ready pod, for client-side balancing.
    (headless,) = [d for d in documents("service.yaml") if d["spec"].get("clusterIP") == "None"]
    assert headless["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in headless["spec"]["ports"]} == {"grpc"}
    assert {p["targetPort"] for p in by_name.values()} == {p["name"] for p in container["ports"]}
    pdb = manifest("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = manifest("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB's maxUnavailable 1 leaves one serving


def test_the_secret_is_a_template_without_values() -> None:
    secret = manifest("secret.example.yaml")
    assert all("REPLACE_ME" in value for value in secret["stringData"].values())
    deployment = manifest("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"] for item in container["env"] if "valueFrom" in item
    }
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    keys |= {i["key"] for v in volumes if "secret" in v for i in v["secret"]["items"]}
    assert keys == set(secret["stringData"])


def test_the_network_policy_example_admits_only_nexus_pods_to_redis_and_postgres() -> None:
    labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    policies = documents("networkpolicy.example.yaml")
    ports = set()
    for policy in policies:
        assert policy["kind"] == "NetworkPolicy"
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        (source,) = rule["from"]
        assert source["podSelector"]["matchLabels"].items() <= labels.items()
        ports |= {p["port"] for p in rule["ports"]}
    secret = manifest("secret.example.yaml")["stringData"]
    expected = {
        int(re.search(r":(\d+)/", secret[key]).group(1))  # type: ignore[union-attr]
        for key in ("storage-url", "redis-events-url")
    }
    assert ports == expected


# -- compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def nexus_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in document["services"].items() if n.startswith("nexus-")}


def test_compose_runs_three_nexus_instances_behind_the_balancer_on_both_ports() -> None:
    document = compose()
    instances = nexus_services(document)
    assert len(instances) == 3
    config = load_config(DEPLOY / "compose" / "nexus.toml", environ={})
    grpc_port, http_port = port_of(config.server.grpc_address), port_of(config.http.address)
    for name, service in instances.items():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert _parser().parse_args(service["command"]).run.__module__ == "nexus_grpc.cli.serve"
        assert int(service["command"][service["command"].index("--workers") + 1]) >= 2
        probe = service["healthcheck"]["test"]
        assert probe[:2] == ["CMD", "nexus"]
        assert _parser().parse_args(probe[2:]).run.__module__ == "nexus_grpc.cli.health"
        assert probe[probe.index("--service") + 1] == "nexus.liveness"
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert {"postgres", "redis"} <= set(service["depends_on"])
    for name, service in document["services"].items():
        assert "healthcheck" in service, f"{name} has no health check"
    # Every file referenced exists.
    for config_entry in document["configs"].values():
        assert (DEPLOY / config_entry["file"]).is_file()
    balancer = document["services"]["balancer"]
    for volume in balancer["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).is_file()
    published = {int(p.split(":")[1]) for p in balancer["ports"]}
    assert published == {grpc_port, http_port}
    # HAProxy: each backend lists exactly the instances, gRPC over HTTP/2, checked on
    # /readyz.
    haproxy = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)(.*)$", haproxy, re.MULTILINE)
    grpc_servers = {(n, int(p)) for n, h, p, rest in servers if "proto h2" in rest}
    rest_servers = {(n, int(p)) for n, h, p, rest in servers if "proto h2" not in rest}
    assert grpc_servers == {(n, grpc_port) for n in instances}
    assert rest_servers == {(n, http_port) for n in instances}
    assert all(f"check port {http_port}" in rest for *_, rest in servers if "proto h2" in rest)
    assert haproxy.count("http-check send meth GET uri /readyz") == 2
    for port in (grpc_port, http_port):
        assert re.search(rf"^\s*bind :{port}\b", haproxy, re.MULTILINE), port
    # Both frontends name the client, and the instances believe it on both ports.
    frontends = re.findall(r"^frontend (\S+)\n((?:[ \t]+.*\n)*)", haproxy, re.MULTILINE)
    bodies = dict(frontends)
    assert "option forwardfor" in bodies["grpc"] and "option forwardfor" in bodies["rest"]
    # ... from the balancer's fixed address alone: a wider network would let any client
    # on it name whatever address it likes (every trusted hop is believed).
    balancer_address = balancer["networks"]["default"]["ipv4_address"]
    subnet = ipaddress.ip_network(document["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(balancer_address) in subnet
    assert config.server.trusted_proxies == (f"{balancer_address}/32",)
    assert config.http.trusted_proxies == (f"{balancer_address}/32",)
    # The balancer's healthcheck asks the running HAProxy (its monitor URI).
    monitor = re.search(r"bind :(\d+)\n\s*monitor-uri (\S+)", bodies["monitor"])
    assert monitor is not None
    check = balancer["healthcheck"]["test"]
    assert check[-1] == f"http://127.0.0.1:{monitor.group(1)}{monitor.group(2)}"


def test_compose_secrets_come_from_the_env_file_and_the_config_loads_with_them(
    tmp_path: Path,
) -> None:
    document = compose()
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    used |= {s["environment"] for s in document["secrets"].values() if "environment" in s}
    example = DEPLOY / ".env.example"
    defined = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used == defined
    # The real env file is never committed (nor sent to the image build).
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO, timeout=30, check=False
    )
    assert ignored.returncode == 0
    assert dockerignored("deploy/.env")
    # Passwords only as variables of the env file.
    bare = text.lower().replace("postgres_password", "").replace("redis_password", "")
    assert "password" not in bare
    redis = document["services"]["redis"]
    assert "requirepass" in " ".join(redis["command"])
    assert "REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])
    (instance, *_) = nexus_services(document).values()
    env = {
        name: re.sub(r"\$\{[^}]+\}", "example", value)
        for name, value in instance["environment"].items()
    }
    config_target = instance["configs"][0]["target"]
    assert env["NEXUS_CONFIG"] == config_target
    (secret,) = instance["secrets"]
    config = load_config(DEPLOY / "compose" / "nexus.toml", environ=env)
    assert config.auth.secret_file == f"/run/secrets/{secret}"
    assert config.storage.url.startswith("postgresql+asyncpg://nexus:example@postgres")
    assert (config.events.backend, config.limits.backend) == ("redis", "redis")
    # The Redis URLs (with the password) come from the environment, not the file.
    for part in ("events", "cache", "limits"):
        assert getattr(config, part).redis_url.startswith("redis://:example@redis:"), part
    assert "redis_url" not in (DEPLOY / "compose" / "nexus.toml").read_text()


def test_every_shipped_nexus_toml_loads_with_nexus_own_loader(tmp_path: Path) -> None:
    for path in (
        DEPLOY / "nexus.toml",
        DEPLOY / "compose" / "nexus.toml",
        configmap_toml(tmp_path),
    ):
        config = load_config(path, environ={})
        raw = tomllib.loads(path.read_text())
        assert isinstance(config, Config)
        assert raw["data_dir"] == config.data_dir
        # The image's volume (/var/lib/nexus, 0700) or, under Kubernetes' fsGroup, a
        # subdirectory of it.
        assert config.data_dir in ("/var/lib/nexus", "/var/lib/nexus/data")
        assert config.plugins.bundled == ("*",)
        # Readiness turns 503 and health NOT_SERVING before the ports stop answering.
        assert config.server.shutdown_delay > 0


# -- README ----------------------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """The README's "Deploy" commands, each split into words (comments dropped)."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- deploy-commands -->", 1)[1].split("<!-- /deploy-commands -->")[0]
    body = block.split("```sh\n", 1)[1].rsplit("```", 1)[0]
    return [shlex.split(line, comments=True) for line in body.splitlines() if line.strip()]


def test_the_readme_deploy_commands_name_what_exists_and_its_lint_commands_pass() -> None:
    commands = {tuple(words[:2]): words for words in readme_commands()}
    health = commands[("nexus", "health")]
    assert _parser().parse_args(health[1:]).run.__module__ == "nexus_grpc.cli.health"
    build = commands[("docker", "build")]
    assert (REPO / build[build.index("-f") + 1]) == DOCKERFILE
    tag = build[build.index("-t") + 1]
    assert tag == compose()["x-nexus"]["image"]
    (container,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert tag == container["image"]
    run = commands[("docker", "run")]
    assert "--read-only" in run and run[-1] == tag
    volume = run[run.index("-v") + 1].split(":")[1]
    assert dict(runtime_stage())["VOLUME"] == f'["{volume}"]'
    published = {int(run[i + 1].split(":")[1]) for i, word in enumerate(run) if word == "-p"}
    assert published == {int(p) for p in dict(runtime_stage())["EXPOSE"].split()}
    copy = commands[("cp", "deploy/.env.example")]
    assert (REPO / copy[1]).is_file()
    up = commands[("docker", "compose")]
    assert REPO / up[up.index("-f") + 1] == COMPOSE
    apply = commands[("kubectl", "apply")]
    assert (REPO / apply[apply.index("-k") + 1] / "kustomization.yaml").is_file()
    # The linters, exactly as the README gives them (tools from this venv).
    hadolint = commands[("hadolint", "deploy/Dockerfile")]
    validate = next(words for key, words in commands.items() if key[0] == "kubernetes-validate")
    assert validate[validate.index("-k") + 1] == KUBERNETES_VERSION
    for words in (hadolint, validate):
        require_tool(words[0], BIN / words[0])
        line = " ".join([str(BIN / words[0]), *words[1:]])  # unquoted: bash expands globs
        result = subprocess.run(
            ["bash", "-c", line], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{line}: {result.stdout}{result.stderr}"


# -- compose's Redis, run for real ---------------------------------------------------


def _compose_shell(text: str) -> str:
    """A compose command string as the container's shell gets it (``$$`` is ``$``)."""
    return text.replace("$$", "$")


def test_compose_redis_requires_the_password_from_the_env_file(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        missing("redis-server")
    redis = compose()["services"]["redis"]
    shell, flag, script = redis["command"]
    assert (shell, flag) == ("sh", "-c")
    config = tmp_path / "redis.conf"
    port = free_port()
    # The shipped script, with the config file and the data in this test's folder and
    # the server on a free loopback port.
    script = _compose_shell(script).replace("/tmp/redis.conf", str(config))
    script += f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --save ''"
    env = {**os.environ, "REDIS_PASSWORD": "s3cret-from-env-file"}
    process = subprocess.Popen(
        [shell, flag, script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        check = _compose_shell(redis["healthcheck"]["test"][1]).replace(
            "redis-cli ping", f"redis-cli -p {port} ping"
        )
        deadline = time.monotonic() + 10
        healthy = False
        while time.monotonic() < deadline and not healthy:
            healthy = subprocess.run(["sh", "-c", check], env=env, timeout=10).returncode == 0
            time.sleep(0.05)
        assert healthy, "the compose healthcheck never passed"
        # The password is in no argument of the server, and its config file is private.
        assert "s3cret" not in Path(f"/proc/{process.pid}/cmdline").read_text()
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        # Without the password Redis refuses, and the healthcheck says unhealthy.
        refused = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=10
        )
        assert "NOAUTH" in refused.stdout + refused.stderr
        wrong = {**env, "REDIS_PASSWORD": "wrong"}
        assert subprocess.run(["sh", "-c", check], env=wrong, timeout=10).returncode != 0
    finally:
        process.terminate()
        process.wait(10)
