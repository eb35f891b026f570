"""Faults of issue #10 in deploy/k8s: drain before kill, read-only artifacts in api pods, guarded rebuild job."""

from __future__ import annotations

from typing import Any

from scalingnote.service.cli import DRAIN_SECONDS
from tests.test_deploy import K8S, container, cronjob_pod_spec, env_map, k8s_docs, load_yaml, one


def _deployment_spec() -> dict[str, Any]:
    return one(k8s_docs(), "Deployment")["spec"]["template"]["spec"]


def test_api_pods_sleep_in_prestop_and_drain_within_the_grace_period() -> None:
    spec = _deployment_spec()
    command = container(spec)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = int(command[1])
    assert pre_stop >= 5, "long enough for the endpoint removal to propagate"
    assert spec["terminationGracePeriodSeconds"] > pre_stop + DRAIN_SECONDS


def test_api_pods_mount_the_artifacts_read_only() -> None:
    spec = _deployment_spec()
    (mount,) = [m for m in container(spec)["volumeMounts"] if m["mountPath"] == "/artifacts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert mount.get("readOnly") is True and volume["persistentVolumeClaim"].get("readOnly") is True


def test_the_rebuild_job_checks_the_served_bundle_and_a_rollback_job_exists() -> None:
    assert env_map(container(cronjob_pod_spec()))["SCALINGNOTE_BUNDLE"] == "/artifacts/bundle"
    job = load_yaml(K8S / "jobs" / "rollback.yaml")
    c = container(job["spec"]["template"]["spec"])
    assert c["command"] + c["args"] == ["scalingnote", "index", "rollback", "--root", "/artifacts/index"]
    assert not any(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] == "/artifacts")
