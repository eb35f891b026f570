"""Multi-node stage 1: the k8s training Job's own torchrun invocation, run as two nodes on 127.0.0.1, and the refusal
of ranks that resume from different checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from scalingnote.errors import UserError
from scalingnote.specs import resolve
from scalingnote.training.loop import same_start_on_every_rank
from scalingnote.training.profiles import load_profile, profile_toml
from tests.conftest import REPO, tiny_tower_config

JOB = REPO / "deploy" / "k8s" / "jobs" / "train-towers.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _manifest() -> tuple[dict, dict]:
    docs = {d["kind"]: d for d in yaml.safe_load_all(JOB.read_text())}
    return docs["Job"], docs["Service"]


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_the_job_is_one_indexed_pod_per_node_with_its_gpus_and_a_rendezvous_address() -> None:
    job, service = _manifest()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flags = _flags(container["args"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(flags["nnodes"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(flags["nproc-per-node"])
    assert flags["node-rank"] == "$(NODE_RANK)"
    (rank_env,) = [e for e in container["env"] if e["name"] == "NODE_RANK"]
    assert rank_env["valueFrom"]["fieldRef"]["fieldPath"].endswith("['batch.kubernetes.io/job-completion-index']")
    # pod 0 of an Indexed Job is <job>-0, reachable as <job>-0.<subdomain> through a headless Service
    assert flags["master-addr"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert service["metadata"]["name"] == pod["subdomain"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert int(flags["master-port"]) in {p["port"] for p in service["spec"]["ports"]}
    # checkpoints and the teacher live on the RWX volume every node mounts; so does the dataset
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    pvcs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((REPO / "deploy" / "k8s" / "pvc.yaml").read_text())}
    for flag in ("work", "out", "dataset"):
        mount = next(m for m in mounts if flags[flag].startswith(m + "/"))
        assert pvcs[claims[mounts[mount]]]["spec"]["accessModes"] == ["ReadWriteMany"], flag
    assert job["spec"]["backoffLimit"] == 0 and container["command"] == ["torchrun"]


def test_the_jobs_torchrun_invocation_trains_one_teacher_on_two_nodes(
    tiny_model: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    """The Job's args as they are, with only the cluster's values swapped for this machine's: 2 nodes × 1 process."""
    job, _ = _manifest()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    profile = load_profile("demo").model_copy(update={"towers": tiny_tower_config(tiny_model)})
    (tmp_path / "tiny.toml").write_text(profile_toml(profile), encoding="utf-8")
    port = _free_port()
    local = {
        "--nproc-per-node": "1",
        "--master-addr": "127.0.0.1",
        "--master-port": str(port),
        "--profile": None,  # becomes --profile-file
        "--dataset": str(tiny_beir),
        "--out": str(tmp_path / "teacher"),
        "--work": str(tmp_path / "work"),
    }
    swapped = set()

    def node_args(rank: int) -> list[str]:
        out = []
        for arg in container["args"]:
            flag = arg.partition("=")[0]
            if arg == "/opt/venv/bin/scalingnote":
                out.append(str(Path(sys.executable).with_name("scalingnote")))
            elif flag == "--node-rank":
                out.append(f"--node-rank={rank}")
            elif flag == "--profile":
                out.append(f"--profile-file={tmp_path / 'tiny.toml'}")
            elif flag in local:
                out.append(f"{flag}={local[flag]}")
            else:
                out.append(arg)
                continue
            swapped.add(flag)
        return out

    torchrun = Path(sys.executable).with_name(container["command"][0])
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    nodes = []
    for rank in range(int(_flags(container["args"])["nnodes"])):
        log = (tmp_path / f"node{rank}.log").open("w")
        nodes.append(subprocess.Popen([str(torchrun), *node_args(rank)], stdout=log, stderr=subprocess.STDOUT, env=env))
    codes = [node.wait(timeout=300) for node in nodes]
    logs = "\n".join((tmp_path / f"node{r}.log").read_text()[-2000:] for r in range(len(nodes)))
    assert codes == [0] * len(nodes), logs
    assert swapped == {*local, "--node-rank", "/opt/venv/bin/scalingnote"}
    info = json.loads((tmp_path / "teacher" / "train.json").read_text())
    assert info["world_size"] == 2 and resolve(tmp_path / "teacher").kind == "dual"


def _resume_main(rank: int, port: int, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        same_start_on_every_rank(3 * rank, Path(root) / "checkpoint")
        message = "accepted"
    except UserError as err:
        message = str(err)
    Path(root, f"rank{rank}.txt").write_text(message)
    dist.barrier()  # both ranks leave together: tearing gloo down under a peer that still talks aborts the peer
    dist.destroy_process_group()


def test_ranks_that_would_resume_at_different_steps_are_refused_on_every_rank(tmp_path: Path) -> None:
    mp.spawn(_resume_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "different steps [0, 3]" in message and "shared storage" in message, message


@pytest.mark.parametrize("start", [0, 5])
def test_one_process_resumes_without_a_process_group(start: int, tmp_path: Path) -> None:
    assert not dist.is_initialized()
    same_start_on_every_rank(start, tmp_path)
