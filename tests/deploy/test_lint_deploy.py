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

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import yaml

from nexus_grpc.cli import _parser
from nexus_grpc.config import Config, load_config
from tests.e2e.conftest import BIN, REPO, require_tool

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


def dockerignore_patterns() -> list[re.Pattern[str]]:
    """The root ``.dockerignore`` as regular expressions on context-relative paths."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not supported by this check"
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
        patterns.append(re.compile(regex + "$"))
    return patterns


def copy_context(target: Path) -> None:
    """The build context Docker would send: the repository less ``.dockerignore``."""
    patterns = dockerignore_patterns()

    def ignored(directory: str, names: list[str]) -> list[str]:
        base = Path(directory).relative_to(REPO)
        return [
            name
            for name in names
            if any(p.match((base / name).as_posix().removeprefix("./")) for p in patterns)
        ]

    shutil.copytree(REPO, target, ignore=ignored)


def test_the_build_context_holds_what_the_dockerfile_copies(tmp_path: Path) -> None:
    context = tmp_path / "context"
    copy_context(context)
    assert not (context / ".git").exists() and not (context / ".venv").exists()
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


def manifest(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((KUBERNETES / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


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
    assert result.stdout.count("passed") == len(files), result.stdout
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


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = manifest("kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifests()} - {"secret.example.yaml"}


def configmap_toml(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(manifest("configmap.yaml")["data"]["nexus.toml"])
    return path


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's NEXUS_* variables; those from a Secret get a placeholder value
    of the right shape."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["name"] == "NEXUS_STORAGE__URL"
            env[item["name"]] = "postgresql+asyncpg://nexus@db.invalid/nexus"
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
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
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
    for writable in (config.data_dir, "/tmp"):
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
    assert {n: p["appProtocol"] for n, p in by_name.items()} == {"grpc": "grpc", "http": "http"}
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
        probe = service["healthcheck"]["test"]
        assert probe[:2] == ["CMD", "nexus"]
        assert _parser().parse_args(probe[2:]).run.__module__ == "nexus_grpc.cli.health"
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
    assert any(p.match("deploy/.env") for p in dockerignore_patterns())
    assert "password" not in text.lower().replace("postgres_password", "")
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


def test_every_shipped_nexus_toml_loads_with_nexus_own_loader(tmp_path: Path) -> None:
    for path in (
        DEPLOY / "nexus.toml",
        DEPLOY / "compose" / "nexus.toml",
        configmap_toml(tmp_path),
    ):
        config = load_config(path, environ={})
        raw = tomllib.loads(path.read_text())
        assert isinstance(config, Config)
        assert raw["data_dir"] == config.data_dir == "/var/lib/nexus"
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
