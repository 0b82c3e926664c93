"""deploy/: what the compose file and the Dockerfile ask of Accord exists.

No Docker engine runs here: `deploy/check-image` builds and runs the image by hand
(buildah, minutes, Debian and PyPI). These check, in every run, that
every `accord` command and option they run is in the CLI, every ACCORD_* variable they
or the env file examples set is one Accord reads, the healthcheck's route is served,
volumes, env files and dependencies are declared, and the example policy loads.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from accord.cli.main import app
from accord.spec.load import parse_policy_text

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SOURCE = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src/accord").rglob("*.py"))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def accord_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if svc.get("image", "").startswith("${ACCORD_IMAGE")}


def check_argv(argv: list[str]) -> None:
    """`accord <argv>` names a real command and only options it has."""
    command: Any = typer.main.get_command(app)  # typer's own click: duck-typed
    rest = list(argv)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"accord has no command {name!r} ({argv})"
        command = sub
    assert not hasattr(command, "commands"), f"accord {' '.join(argv)}: incomplete"
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in options, f"accord {argv[0]}: no option {word}"


def accord_commands(svc: dict[str, Any]) -> list[list[str]]:
    """The accord command lines a service runs (its command, or its sh -c entrypoint)."""
    entry = svc.get("entrypoint")
    if entry:
        assert entry[:2] == ["sh", "-c"], entry
        return [shlex.split(part)[1:] for part in entry[2].split("&&")
                if shlex.split(part)[0] == "accord"]
    return [svc["command"]]


def test_every_service_runs_real_accord_commands() -> None:
    services = accord_services()
    assert {"migrate", "accord-1", "accord-2", "worker", "gateway"} <= services.keys()
    seen = set()
    for svc in services.values():
        for argv in accord_commands(svc):
            check_argv(argv)
            seen.add(argv[0])
    assert seen >= {"db", "audit", "serve", "worker", "gateway"}
    replicas = [s for s in services.values() if (s.get("command") or [""])[0] == "serve"]
    assert len(replicas) == 2
    for svc in replicas:  # the jobs run in the worker, not in every replica
        assert "--no-worker" in svc["command"]


def test_every_variable_set_is_one_accord_reads() -> None:
    names: set[str] = set()
    for svc in accord_services().values():
        names |= set(svc.get("environment", {}))
        for env_file in svc.get("env_file", []):
            example = DEPLOY / f"{env_file}.example"
            assert example.exists(), f"{env_file} has no {example.name} to start from"
            text = example.read_text(encoding="utf-8")
            names |= set(re.findall(r"^#?\s*(ACCORD_[A-Z_]+)=", text, re.M))
    assert "ACCORD_DATABASE_URL" in names
    for name in names:
        assert f'"{name}"' in SOURCE, f"{name} is not read anywhere in src/accord"
    # secrets come from env files, never inline in compose.yaml
    for svc in compose()["services"].values():
        for key in svc.get("environment", {}):
            value = str(svc["environment"][key])
            assert not re.search(r"PASSWORD|SIGNING_SECRET|TOKEN$|DATABASE_URL", key), key
            assert "://" not in value or "@" not in value, f"{key}: credentials inline"


def test_volumes_env_files_and_dependencies_are_declared() -> None:
    spec = compose()
    declared = set(spec["volumes"])
    for name, svc in spec["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in spec["services"], f"{name} depends on unknown {dep}"
    gitignore = (DEPLOY / ".gitignore").read_text(encoding="utf-8")
    assert "*.env" in gitignore.split()


def test_the_dockerfile_runs_accord_and_checks_readyz() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert text.count("\nFROM ") >= 1 and re.search(r"^FROM .* AS build$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M), "runs as an unprivileged user"
    assert "pip install ." in text  # from pyproject.toml
    assert 'ENTRYPOINT ["accord"]' in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    argv = yaml.safe_load(cmd.group(1))
    check_argv(argv)
    port = argv[argv.index("--port") + 1]
    health = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", text)
    assert health is not None and health.group(1) == port
    assert health.group(2) == "/readyz"


@pytest.mark.parametrize("path", ["/readyz", "/healthz", "/metrics"])
def test_the_routes_the_deployment_uses_exist(path: str) -> None:
    source = (ROOT / "src/accord/api").rglob("*.py")
    assert any(f'"{path}"' in p.read_text(encoding="utf-8") for p in source), path


def test_the_example_policy_loads() -> None:
    path = DEPLOY / "accord.yaml"
    policy = parse_policy_text(path.read_text(encoding="utf-8"), str(path))
    assert policy is not None


def test_every_metric_docs_operations_names_exists() -> None:
    """What to monitor and alert on names only metrics Accord exports."""
    defined = set(re.findall(r'"(accord_[a-z_]+)"', SOURCE))
    text = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\baccord_[a-z_]+[a-z](?![a-z_]*\*)", text))  # not accord_jobs_*
    assert len(named) > 20
    for name in named:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert name in defined or base in defined, f"docs/operations.md: no metric {name}"


def test_check_image_is_a_working_script() -> None:
    """deploy/check-image (the image built and run without a Docker engine) parses and
    answers --help; it is run by hand (a build takes minutes and reaches Debian and PyPI),
    its last result is in deploy/README.md."""
    script = DEPLOY / "check-image"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "buildah" in out.stdout and "--no-build" in out.stdout
    bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument: --bogus" in bad.stderr
