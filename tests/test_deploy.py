"""The cluster recipes hold together: the Kubernetes manifests and the Dockerfile (which cannot run here) and
the Slurm scripts (run for real in test_slurm.py) name the same image, steps and services, and every command
in them is one the sweep's own parser and config loader accept."""
import inspect
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import alexnet_exp.data
from alexnet_exp.config import load_config
from alexnet_exp.redaction import redact_text
from alexnet_exp.sweep import keys
from alexnet_exp.sweep.cli import build_parser

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


STEPS = {"alexnet-sweep-init": "--init-only", "alexnet-sweep-workers": "--join", "alexnet-sweep-finish": "--finalize"}
DATA_JOB = "alexnet-data"  # the one-off Job that fills the data volume (data-job.yaml)


def pod_specs(docs):
    """(kind, name) -> the pod spec of every workload (Job, Deployment, StatefulSet) and bare Pod."""
    return {key: d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
            for key, d in docs.items() if d["kind"] == "Pod" or "template" in d.get("spec", {})}


def all_containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n### {title}\n")
    return text[start:text.index("\n## ", start)]


def image_ref() -> str:
    """The image the Dockerfile's comment builds: every manifest runs exactly it."""
    return re.search(r"docker build -t (\S+) \.", dockerfile()).group(1)


def quantity(q) -> float:
    """A Kubernetes quantity (2Gi, 512Mi, 500m, 4) as a number of bytes or cores."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return float(number) * units.get(unit, 1)


def test_the_three_steps_are_jobs_of_one_image_with_commands_the_sweep_accepts():
    docs = manifests()
    jobs = {name: doc for (kind, name), doc in docs.items() if kind == "Job" and name != DATA_JOB}
    flags = STEPS
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
        if "nvidia.com/gpu" in container.get("resources", {}).get("limits", {}):
            assert args.device == "cuda"  # no GPU in the pod (a missing runtime): exit 2, not a CPU run
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
    assert build_parser().parse_args(container["args"]).device == "cuda"
    # a sized shared-memory folder (the runtime's default is 64 MiB); tmpfs counts toward the memory limit
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert 0 < quantity(volume["emptyDir"]["sizeLimit"]) < quantity(container["resources"]["limits"]["memory"])


def test_one_pinned_image_pulled_only_if_not_present():
    ref = image_ref()
    assert ":" in ref and not ref.endswith(":latest")  # :latest means imagePullPolicy Always: a Docker Hub pull
    using = set()
    for (_kind, name), spec in pod_specs(manifests()).items():
        for container in all_containers(spec):
            assert container.get("imagePullPolicy") == "IfNotPresent", (name, container["name"])
            if container["image"] != "postgres:16":
                assert container["image"] == ref, (name, container["name"])
                using.add(name)
    assert {"mlflow", DATA_JOB, *STEPS} <= using
    readme = readme_section("Kubernetes")
    assert f"docker build -t {ref} ." in readme
    files = [f.name for f in sorted(K8S.glob("*.yaml")) if f"image: {ref}" in f.read_text()]
    assert len(files) >= 5
    for file in files:  # the README names every file to edit for another registry
        assert file in readme, file


WAITERS = {name: [("postgres", 5432), ("mlflow", 5000)] for name in STEPS} | {"mlflow": [("postgres", 5432)]}


def wait_containers():
    docs = manifests()
    found = {}
    for (_kind, name), spec in pod_specs(docs).items():
        if name in WAITERS:
            (wait,) = spec["initContainers"]
            assert wait["command"][:2] == ["python", "-c"] and "socket.create_connection" in wait["command"][2]
            assert wait["image"] == all_containers(spec)[-1]["image"]  # the same image: no pg_isready in it
            found[name] = wait
    assert set(found) == set(WAITERS)
    return docs, found


def test_pods_wait_for_the_database_and_the_tracking_server_before_they_start():
    docs, waits = wait_containers()
    for name, wait in waits.items():
        targets = [(host, int(port)) for host, port in (a.rsplit(":", 1) for a in wait["args"])]
        assert targets == WAITERS[name]
        for host, port in targets:  # what the init container waits for is the Service the step talks to
            assert port == docs[("Service", host)]["spec"]["ports"][0]["port"]
    for name in STEPS:
        (container,) = containers(docs[("Job", name)])
        args = build_parser().parse_args(container["args"])
        db = re.match(r"postgresql://[^@]+@([^:/]+):(\d+)/", args.storage).groups()
        tracking = re.match(r"http://([^:/]+):(\d+)$", env_of(container)["MLFLOW_TRACKING_URI"]["value"]).groups()
        assert [(h, int(p)) for h, p in (db, tracking)] == WAITERS[name]
    assert len({w["command"][2] for w in waits.values()}) == 1  # one script in every manifest


def test_the_wait_script_returns_once_the_port_answers_and_waits_while_it_does_not():
    _, waits = wait_containers()
    script = next(iter(waits.values()))["command"][2]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        subprocess.run([sys.executable, "-c", script, f"127.0.0.1:{port}"], check=True, timeout=300)
    # the port is closed now: the script keeps waiting, saying for what
    proc = subprocess.Popen([sys.executable, "-c", script, f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.kill()
        out = proc.communicate()[0]
    assert f"waiting for 127.0.0.1:{port}" in out


def test_bad_input_and_repeated_errors_fail_the_job_at_once_and_evictions_do_not_count():
    docs = manifests()
    for name in STEPS:
        job = docs[("Job", name)]
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"  # podFailurePolicy requires it
        (container,) = spec["containers"]
        rules = job["spec"]["podFailurePolicy"]["rules"]
        fail = next(r for r in rules if r["action"] == "FailJob")
        codes = fail["onExitCodes"]
        assert codes["containerName"] == container["name"] and codes["operator"] == "In"
        expected = {keys.EXIT_BAD_INPUT, keys.EXIT_ERRORS}
        if name == "alexnet-sweep-finish":
            expected.add(keys.EXIT_INCOMPLETE)  # budget not met: a retry cannot meet it either
        assert set(codes["values"]) == expected
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
        assert job["spec"]["backoffLimit"] >= 1


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit():
    for (_kind, name), spec in pod_specs(manifests()).items():
        for container in all_containers(spec):
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            assert quantity(requests["cpu"]) > 0 and quantity(requests["memory"]) > 0, (name, container["name"])
            assert quantity(limits["memory"]) >= quantity(requests["memory"]), (name, container["name"])


def test_the_tracking_server_is_replaced_not_rolled_and_restarted_when_it_hangs():
    docs = manifests()
    deployment = docs[("Deployment", "mlflow")]
    spec = deployment["spec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert [docs[("PersistentVolumeClaim", c)]["spec"]["accessModes"] for c in claims] == [["ReadWriteOnce"]]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # a second pod could not mount the volume
    (server,) = spec["containers"]
    port = server["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": port}


def data_mount(spec, container):
    """(mount, volume) of the container's mount of the data claim."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in container.get("volumeMounts", [])
                if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == "cifar-data"]
    return mount, volumes[mount["name"]]


def test_a_one_off_job_fills_the_data_volume_that_the_steps_read(monkeypatch):
    docs = manifests()
    # one writer (the data Job), then readers on many nodes: only ReadWriteMany allows both
    assert docs[("PersistentVolumeClaim", "cifar-data")]["spec"]["accessModes"] == ["ReadWriteMany"]
    job = docs[("Job", DATA_JOB)]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mount, volume = data_mount(spec, container)
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    assert container["command"][:2] == ["python", "-c"]
    calls, real = [], alexnet_exp.data.load_dataset
    monkeypatch.setattr(alexnet_exp.data, "load_dataset", lambda *a, **k: calls.append((a, k)))
    exec(container["command"][2], {})  # the Job's code, with the loader recording its call instead
    ((a, k),) = calls
    inspect.signature(real).bind(*a, **k)
    config = load_config(ROOT / build_parser().parse_args(containers(docs[("Job", "alexnet-sweep-init")])[0]["args"]
                                                           ).config)
    assert a == (config.data.dataset,) and k == {"root": mount["mountPath"], "download": True}
    for name in STEPS:
        step = docs[("Job", name)]["spec"]["template"]["spec"]
        (step_container,) = step["containers"]
        step_mount, step_volume = data_mount(step, step_container)
        assert step_mount["readOnly"] and step_volume["persistentVolumeClaim"]["readOnly"]
        assert step_mount["mountPath"] == mount["mountPath"]
    # offline: a pod on the same claim, read-write, to kubectl cp the archive into, then the same Job
    copier = docs[("Pod", "cifar-copy")]
    (copy_container,) = copier["spec"]["containers"]
    copy_mount, copy_volume = data_mount(copier["spec"], copy_container)
    assert copy_mount["mountPath"] == mount["mountPath"] and not copy_mount.get("readOnly")
    readme = readme_section("Kubernetes")
    assert f"kubectl cp cifar-100-python.tar.gz cifar-copy:{mount['mountPath']}/" in readme
    assert f"kubectl cp cifar-100-python.tar.gz cifar-copy:{mount['mountPath']}/" in (K8S / "data-job.yaml").read_text()


def test_the_readme_applies_every_manifest_in_an_order_that_works():
    readme = readme_section("Kubernetes").replace("\\\n", " ")
    applied = re.findall(r"-f deploy/kubernetes/(\S+\.yaml)", readme)
    assert set(applied) == {f.name for f in K8S.glob("*.yaml")}
    order = {f: readme.index(f"-f deploy/kubernetes/{f}") for f in applied}
    wait_data = readme.index(f"kubectl wait --for=condition=complete job/{DATA_JOB}")
    assert order["data-pvc.yaml"] < order["data-job.yaml"] < wait_data < order["init-job.yaml"]
    assert order["secret.yaml"] < order["postgres.yaml"] and order["worker-job.yaml"] < order["finish-job.yaml"]
    assert "have not run on a cluster here" in readme


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


def test_the_workers_get_sigterm_before_the_time_limit_and_a_single_task_has_a_readable_log():
    text = (SLURM / "sweep.sbatch").read_text()
    # B: the batch step, which is python itself (exec); minutes before the limit, not KillWait's 30 s
    lead = int(re.search(r"^#SBATCH --signal=B:TERM@(\d+)$", text, re.M).group(1))
    assert lead >= 120
    name = re.search(r"^#SBATCH --job-name=(\S+)$", text, re.M).group(1)
    pattern = re.search(r"^#SBATCH --output=(\S+)$", text, re.M).group(1)
    # test_slurm.py finds an array's logs as slurm-logs/alexnet-sweep-<array id>_<task>.out
    assert pattern.replace("%x", name).replace("%A", "123").replace("%a", "4") == "slurm-logs/alexnet-sweep-123_4.out"
    single = "sbatch --output=slurm-logs/%x-%j.out deploy/slurm/sweep.sbatch"  # no array: no %a (4294967294)
    assert single in text and single in readme_section("Slurm")
