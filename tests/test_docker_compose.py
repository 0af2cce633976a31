"""docker-compose.yml is valid for the Debian docker-compose package and has the production shape.

Needs the `docker-compose` binary (`make test` installs it through scripts/system-deps.sh);
without it this FAILS on purpose: an unvalidated compose file must not pass CI.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"SECRET_KEY": "s" * 40, "FIELD_ENCRYPTION_KEY": "k" * 44, "POSTGRES_PASSWORD": "pw"}


def _config(tmp_path, env: dict, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed: run `make system-deps` (Debian package docker-compose)"
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    return subprocess.run(
        [binary, "--env-file", str(empty_env_file), "-f", str(ROOT / "docker-compose.yml"), "config", *args],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60,
    )


def test_docker_compose_config_passes(tmp_path):
    result = _config(tmp_path, REQUIRED)
    assert result.returncode == 0, result.stderr


def test_compose_has_the_production_services_with_healthchecks(tmp_path):
    # when
    result = _config(tmp_path, REQUIRED, "--services")
    # then
    assert set(result.stdout.split()) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    rendered = _config(tmp_path, REQUIRED).stdout
    import yaml

    services = yaml.safe_load(rendered)["services"]
    for name in ("postgres", "redis", "web", "worker"):
        assert "healthcheck" in services[name], name
    assert "--workers 4" in json.dumps(services["web"]["command"])
    assert services["web"]["environment"]["DATABASE_URL"].startswith("postgres://tokenbill:pw@postgres:5432/")
    assert services["web"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_compose_refuses_to_start_without_secrets(tmp_path, missing):
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    result = _config(tmp_path, env)
    assert result.returncode != 0 and missing in result.stderr
