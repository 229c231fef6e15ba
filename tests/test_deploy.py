"""The cluster recipes hold together: the Kubernetes manifests and the Dockerfile (which cannot run here) and
the Slurm scripts (run for real in test_slurm.py) name the same image, steps and services, and every command
in them is one the sweep's own parser and config loader accept."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from alexnet_exp.config import load_config
from alexnet_exp.redaction import redact_text
from alexnet_exp.sweep import build_parser

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SLURM = ROOT / "deploy" / "slurm"


def manifests():
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def containers(doc):
    return doc["spec"]["template"]["spec"]["containers"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def dockerfile():
    return (ROOT / "Dockerfile").read_text()


def test_the_three_steps_are_jobs_of_one_image_with_commands_the_sweep_accepts():
    docs = manifests()
    jobs = {name: doc for (kind, name), doc in docs.items() if kind == "Job"}
    flags = {"alexnet-sweep-init": "--init-only", "alexnet-sweep-workers": "--join",
             "alexnet-sweep-finish": "--finalize"}
    assert set(jobs) == set(flags)
    image = containers(docs[("Deployment", "mlflow")])[0]["image"]
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile(), re.M).group(1)
    for name, job in jobs.items():
        (container,) = containers(job)
        assert container["image"] == image  # one image for the steps and the tracking server
        assert container["command"] == ["python", "-m", "alexnet_exp.sweep"]
        args = build_parser().parse_args(container["args"])  # exits (fails the test) on a flag it does not know
        assert getattr(args, flags[name].lstrip("-").replace("-", "_"))
        config = load_config(ROOT / args.config)  # the image's copy of the YAML is the repo's
        assert f"COPY {Path(args.config).parts[0]}" in dockerfile()
        # the data volume sits where the config reads its data, inside the image's working folder
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert f"{workdir}/{config.data.root}" in mounts
        assert redact_text(args.storage) == args.storage  # no password in any URL: it comes from the Secret
        env = env_of(container)
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "alexnet-db"
        host, port = re.match(r"http://([^:/]+):(\d+)$", env["MLFLOW_TRACKING_URI"]["value"]).groups()
        service = docs[("Service", host)]
        assert int(port) == service["spec"]["ports"][0]["port"]
        db_host, db_port = re.match(r"postgresql://[^@]+@([^:/]+):(\d+)/", args.storage).groups()
        assert int(db_port) == docs[("Service", db_host)]["spec"]["ports"][0]["port"]


def test_workers_run_in_parallel_one_gpu_each_and_stop_cleanly():
    job = manifests()[("Job", "alexnet-sweep-workers")]
    assert job["spec"]["parallelism"] >= 2 and "completions" not in job["spec"]  # a work queue: stop when done
    (container,) = containers(job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30  # time to record SIGTERM


def test_the_secret_and_the_servers_agree():
    docs = manifests()
    assert "password" in docs[("Secret", "alexnet-db")]["stringData"]
    (pg,) = containers(docs[("StatefulSet", "postgres")])
    assert env_of(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "alexnet-db"
    (server,) = containers(docs[("Deployment", "mlflow")])
    assert server["command"] == ["mlflow", "server"]
    backend = server["args"][server["args"].index("--backend-store-uri") + 1]
    assert redact_text(backend) == backend and "@postgres:5432/mlflow" in backend
    assert "CREATE DATABASE mlflow" in docs[("ConfigMap", "alexnet-db-init")]["data"]["mlflow.sql"]


def test_the_image_installs_what_the_readme_installs():
    readme = (ROOT / "README.md").read_text()
    install = re.search(r"pip install (torch==\S+ torchvision==\S+)", readme).group(1)
    assert f"pip install {install} -e ." in dockerfile()


def sweep_lines(script: Path) -> list[str]:
    text = script.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if "-m alexnet_exp.sweep" in line]


@pytest.mark.parametrize("script,flag", [("init.sbatch", "--init-only"), ("sweep.sbatch", "--join"),
                                         ("finish.sbatch", "--finalize")])
def test_slurm_scripts_parse_and_run_their_step(script, flag):
    path = SLURM / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    (line,) = sweep_lines(path)
    words = shlex.split(line.replace("${SWEEP_PYTHON:-python}", "python").replace("${SWEEP_ARGS:-}", "")
                        .replace('"$SWEEP_CONFIG"', "search_spaces/smoke.yaml")
                        .replace('"$SWEEP_STORAGE"', "postgresql://alex@db:5432/optuna")
                        .replace('"${SWEEP_WAIT:-600}"', "600"))
    args = build_parser().parse_args(words[words.index("alexnet_exp.sweep") + 1:])
    assert flag in words and args.storage and words[0] == "exec"  # exec: python gets scancel's SIGTERM
    if flag == "--join":
        assert "#SBATCH --gres=gpu:1" in path.read_text()
    subprocess.run(["bash", "-n", str(SLURM / "submit.sh")], check=True)
