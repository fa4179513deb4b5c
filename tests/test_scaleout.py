"""Scale-out: the SLURM and Kubernetes profiles, the GPU overlay, parallel branches, the DAG figure.

The SLURM path runs for real: Snakemake with ``--profile workflow/profiles/slurm`` submits
through snakemake-executor-plugin-slurm to stand-in ``sbatch``/``squeue``/``sacct``/``srun``
commands (tests/fake_slurm) that run each job script on this machine and report its state in
SLURM's formats, and each job re-enters Snakemake through the slurm-jobstep plugin and srun.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fake_slurm.fake_slurm import install as install_fake_slurm
from pneumocxr.config import load_params
from test_workflow import BIN, copy_workflow, run, write_overlay

GPU_RULES = {"train_binary", "train_three_class", "train_autoencoder", "embed", "explain"}
TRAIN_RULES = {"train_binary", "train_three_class", "train_autoencoder"}
LIGHT_RULES = {"make_demo", "prepare", "evaluate_binary", "evaluate_three_class", "evaluate_anomaly",
               "tsne_knn", "compare_models"}
# Smaller than config/demo.yaml: the SLURM run builds only make_demo and prepare.
TINY = {"demo": {"n_train": 40, "n_test": 10, "n_val": 4, "size": 64},
        "data": {"val_fraction": 0.25}, "prepare": {"resize": 64, "crop": 48}}


def _render_dag():
    """docs/render_dag.py (a documentation tool, not part of the package) as a module."""
    path = Path(__file__).resolve().parents[1] / "docs/render_dag.py"
    spec = importlib.util.spec_from_file_location("render_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def planned_jobs(dry_run_output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a ``snakemake -n`` prints."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in dry_run_output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            jobs.append((m.group(1), {}))
        elif line.strip().startswith("resources:") and jobs:
            pairs = line.split(":", 1)[1].split(",")
            jobs[-1][1].update(p.strip().split("=", 1) for p in pairs if "=" in p)
    return jobs


def profile(repo_root: Path, name: str) -> dict:
    return yaml.safe_load((repo_root / "workflow/profiles" / name / "config.yaml").read_text())


def test_slurm_profile_gives_training_a_gpu_and_keeps_light_rules_small(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    proc = run([str(BIN / "snakemake"), "--profile", "workflow/profiles/slurm", "all", "-n",
                "--configfile", "config/demo.yaml", "config/gpu.yaml"], work)
    jobs = planned_jobs(proc.stdout + proc.stderr)
    rules = {rule for rule, _ in jobs}
    assert GPU_RULES | LIGHT_RULES <= rules
    # the GPU overlay plans the study's three architectures
    archs = {a for a in ("resnet18", "vgg16", "alexnet") if f"/binary/{a}/" in proc.stdout}
    assert archs == {"resnet18", "vgg16", "alexnet"}
    for rule, res in jobs:
        if rule in GPU_RULES:
            assert res.get("gpu") == "1", (rule, res)
        else:
            assert "gpu" not in res, (rule, res)
        if rule in TRAIN_RULES:
            assert int(res["runtime"]) >= 120 and int(res["mem_mb"]) >= 8000, (rule, res)
        if rule in LIGHT_RULES:          # small CPU jobs, the profile's default wall time
            assert int(res["mem_mb"]) <= 4000 and int(res["runtime"]) == 60, (rule, res)


def test_kubernetes_profile_declares_the_same_resources_as_slurm(repo_root):
    slurm, k8s = profile(repo_root, "slurm"), profile(repo_root, "kubernetes")
    assert slurm["executor"] == "slurm" and k8s["executor"] == "kubernetes"
    gpu = lambda p: {r for r, res in p["set-resources"].items() if res.get("gpu") == 1}  # noqa: E731
    assert gpu(slurm) == gpu(k8s) == GPU_RULES
    assert all(res.get("gpu_manufacturer") == "nvidia" for res in k8s["set-resources"].values())
    for key in ("mem_mb", "runtime"):
        assert slurm["default-resources"][key] == k8s["default-resources"][key]
    # the plugins it needs are pinned beside it
    pins = (repo_root / "workflow/profiles/kubernetes/requirements.txt").read_text()
    assert "snakemake-executor-plugin-kubernetes==" in pins and "snakemake-storage-plugin-s3==" in pins


def test_gpu_overlay_is_the_studys_setting(repo_root):
    p = load_params(repo_root / "params.yaml", [repo_root / "config/gpu.yaml"])
    assert (p["prepare"]["resize"], p["prepare"]["crop"]) == (256, 224)
    assert p["train"]["archs"] == ["resnet18", "vgg16", "alexnet"]
    assert p["train"]["weights"] == "imagenet"
    assert p["train"]["precision"] in ("auto", "bf16") and p["device"] in ("auto", "cuda")
    study = load_params(repo_root / "params.yaml",
                        [repo_root / "config/gpu.yaml", repo_root / "config/study.yaml"])
    assert p["train"]["epochs"] == study["train"]["epochs"]
    assert p["train"]["three_class"] == study["train"]["three_class"]


def slurm_env(tmp_path: Path) -> dict[str, str]:
    fake_bin = install_fake_slurm(tmp_path / "fake_bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PATH=f"{fake_bin}:{BIN}:{env['PATH']}", FAKE_SLURM_STATE=str(tmp_path / "slurm"),
               FAKE_SLURM_CPUS="8", FAKE_SLURM_MEM_MB="16000", FAKE_SLURM_GPUS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fake_slurm_runs_jobs_and_reports_their_states_in_slurm_formats(tmp_path):
    env = slurm_env(tmp_path)
    sh = lambda cmd: subprocess.run(cmd, shell=True, cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True)
    common = "sbatch --parsable --job-name RUN --output log_%j.txt -t 1 --ntasks=1"
    ok = sh(f"{common} --cpus-per-task=2 --mem 500 --wrap='echo cpus=$SLURM_CPUS_PER_TASK'")
    bad = sh(f'{common} --wrap="exit 3"')
    assert ok.returncode == bad.returncode == 0
    ok_id, bad_id = ok.stdout.strip(), bad.stdout.strip()
    for _ in range(100):
        states = dict(line.split("|") for line in sh(
            "sacct -X --parsable2 --noheader --format=JobIdRaw,State --name RUN").stdout.split())
        if set(states.values()) <= {"COMPLETED", "FAILED"}:
            break
        time.sleep(0.1)
    assert states == {ok_id: "COMPLETED", bad_id: "FAILED"}
    assert (tmp_path / f"log_{ok_id}.txt").read_text() == "cpus=2\n"
    squeue = sh("squeue --format='%i|%T' --states=all --noheader --name RUN").stdout.split()
    assert sorted(squeue) == sorted(f"{k}|{v}" for k, v in states.items())
    too_big = sh(f'{common} --cpus-per-task=99 --wrap="true"')
    assert too_big.returncode == 1 and "Requested node configuration" in too_big.stderr
    assert sh('sbatch --bogus --wrap="true"').returncode == 1
    assert sh("srun true").returncode == 1                 # no job step outside an allocation


@pytest.mark.slow
def test_demo_data_stages_run_through_the_slurm_executor_plugin(repo_root, tmp_path):
    (tmp_path / "work").mkdir()
    work = copy_workflow(repo_root, tmp_path / "work")
    tiny = write_overlay(tmp_path / "tiny.yaml", TINY)
    env = slurm_env(tmp_path)
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--profile", "workflow/profiles/slurm", "results/data/summary.json",
         "--configfile", "config/demo.yaml", str(tiny),
         # poll the stand-in every few seconds, not every 40 s as on a real cluster
         "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
         "--slurm-keep-successful-logs"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = json.loads((work / "results/data/summary.json").read_text())
    assert summary["data_source"] == "demo"

    state = tmp_path / "slurm"
    calls = {c["comment"]: c for c in jsonl(state / "sbatch_calls.jsonl")}
    assert set(calls) == {"rule_make_demo", "rule_prepare"}
    jobs = {c: json.loads((state / f"job_{calls[c]['id']}.json").read_text()) for c in calls}
    # each job got what its rule declares: threads -> cpus, mem_mb, runtime (profile default)
    assert (jobs["rule_make_demo"]["cpus"], jobs["rule_make_demo"]["mem_mb"]) == (1, 1000)
    assert (jobs["rule_prepare"]["cpus"], jobs["rule_prepare"]["mem_mb"]) == (4, 4000)
    assert all(j["time_limit_min"] == 60 and j["gpus"] == 0 for j in jobs.values())
    assert all(j["state"] == "COMPLETED" and j["exit_code"] == 0 for j in jobs.values())
    # prepare was submitted only after make_demo had finished
    assert jobs["rule_prepare"]["submitted"] >= jobs["rule_make_demo"]["ended"]
    # inside each allocation the job step ran through srun, with the rule's threads (capped by
    # the CPUs the job-step Snakemake sees: this machine's, as the stand-in runs no cgroup)
    steps = {s["job"]: s for s in jsonl(state / "srun_calls.jsonl")}
    assert set(steps) == {j["id"] for j in jobs.values()}
    step_cpus = min(4, os.cpu_count() or 1)
    assert f"--cpus-per-task={step_cpus}" in steps[jobs["rule_prepare"]["id"]]["options"]
    wrap = next(a for a in calls["rule_prepare"]["argv"] if a.startswith("--wrap="))
    assert "--executor slurm-jobstep" in wrap                       # the allocation's Snakemake
    step = steps[jobs["rule_prepare"]["id"]]["command"]              # ... and its job step
    assert step[1:3] == ["-m", "snakemake"] and "prepare:" in step
    # the SLURM log of each job holds the job-step Snakemake's report
    log = (work / ".snakemake/slurm_logs/rule_prepare" / f"{jobs['rule_prepare']['id']}.log")
    assert "rule prepare" in log.read_text()


def test_dag_layers_put_every_node_below_its_parents_and_reject_cycles():
    render_dag = _render_dag()
    nodes, edges = render_dag.parse_dot('strict digraph {\n"a";\n"b";\n"a" -> "b";\n'
                                        '"a" -> "c";\n"b" -> "d";\n"c" -> "d";\n"d" -> "e";\n'
                                        '"c" -> "e";\n}')
    assert render_dag.layers(nodes, edges) == [["a"], ["b", "c"], ["d"], ["e"]]
    with pytest.raises(ValueError, match="cycle"):
        render_dag.layers(["x", "y"], [("x", "y"), ("y", "x")])


def test_rulegraph_renders_without_graphviz(repo_root, tmp_path):
    render_dag = _render_dag()
    dot = run([str(BIN / "snakemake"), "all", "--rulegraph", "--configfile", "config/demo.yaml"],
              repo_root).stdout
    nodes, edges = render_dag.parse_dot(dot)
    assert {"make_demo", "prepare", "train_binary", "train_autoencoder", "all"} <= set(nodes)
    assert ("make_demo", "prepare") in edges
    depth = {n: d for d, row in enumerate(render_dag.layers(nodes, edges)) for n in row}
    assert all(depth[a] < depth[b] for a, b in edges)
    groups = render_dag.rule_groups(repo_root / "workflow/rules")
    assert render_dag.group_of("train_binary_resnet18", groups) == "classify"   # a DVC stage
    png = render_dag.render(dot, tmp_path / "dag.png", "rule graph", repo_root / "workflow/rules")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def scheduled(log: str) -> tuple[int, int, set[str]]:
    """From a Snakemake run's output: the most jobs and the most threads running at once, and
    the rules of the jobs that ran side by side."""
    running: dict[str, tuple[str, int]] = {}
    most_jobs = most_threads = 0
    together: set[str] = set()
    rule = jobid = None
    for line in log.splitlines():
        start = re.match(r"^(?:local)?rule (\w+):$", line)
        if start:
            rule, jobid = start.group(1), None
        elif rule and line.strip().startswith("jobid:"):
            jobid = line.split(":")[1].strip()
            running[jobid] = (rule, 1)
        elif jobid and line.strip().startswith("threads:"):
            running[jobid] = (rule, int(line.split(":")[1]))
        elif line.startswith("Finished jobid:"):
            running.pop(line.split()[2], None)
            rule = jobid = None
        total = sum(t for _, t in running.values())
        most_threads = max(most_threads, total)
        if len(running) > 1:
            together |= {r for r, _ in running.values()}
        most_jobs = max(most_jobs, len(running))
    return most_jobs, most_threads, together


@pytest.mark.slow
def test_independent_branches_run_side_by_side_within_the_cores(repo_root, tmp_path):
    work = copy_workflow(repo_root, tmp_path)
    quick = {"train": {"epochs": 1, "batch_size": 8, "schedule": "constant"},
             "anomaly": {"model": {"input_size": 32, "channels": [8, 16], "latent_dim": 16},
                         "train": {"epochs": 1, "batch_size": 8}}}
    overlays = [str(write_overlay(tmp_path / n, o)) for n, o in (("tiny.yaml", TINY), ("quick.yaml", quick))]
    targets = ["results/models/binary/resnet18/best.pt", "results/models/autoencoder/best.pt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def snakemake_run(*args: str) -> str:
        proc = subprocess.run([str(BIN / "snakemake"), *targets, "--cores", "2", *args,
                               "--configfile", "config/demo.yaml", *overlays],
                              cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    # one thread each: the classifier and the autoencoder train at the same time on 2 cores
    jobs, threads, together = scheduled(
        snakemake_run("--set-threads", "train_binary=1", "train_autoencoder=1"))
    assert jobs == 2 and threads <= 2 and {"train_binary", "train_autoencoder"} <= together
    # their declared 8 threads, capped at 2 each: never both at once
    jobs, threads, _ = scheduled(snakemake_run("--forcerun", "train_binary", "train_autoencoder"))
    assert (jobs, threads) == (1, 2)
