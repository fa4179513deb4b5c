"""What reruns when: one edit at a time, the exact stages each engine plans.

On the demo workspace (README's DVC command, then Snakemake on the same params; conftest's
``demo_workspace``) each row applies one edit -- a key in each params section, a library
module, a timestamp -- and asserts the stages ``snakemake -n`` and ``dvc repro --dry`` plan:

* **DVC** reruns the stages whose own deps changed (params keys, code, data; what
  ``dvc status`` lists); downstream stages run only if an output they read changes, which it
  cannot know beforehand, so the DVC column is the *direct* set;
* **Snakemake** plans the direct stages and everything downstream of them.

Then a few edits are executed, including a code edit that reproduces the same bytes, where
DVC must stop after the edited stages. Raw-data edits (one image replaced, one touched) run in
a smaller workspace on a copy of the demo images as a "kermany" folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pneumocxr.workflow_sync import JobSpec, stage_name
from test_workflow import BIN, copy_workflow, run

pytestmark = pytest.mark.slow

B, T = "binary_resnet18", "three_class_resnet18"


def both(*stems: str) -> set[str]:
    """``train`` -> {train_binary_resnet18, train_three_class_resnet18}."""
    return {f"{s}_{t}" for s in stems for t in (B, T)}


SITE = {"prepare_external@demo_site", "evaluate_external@demo_site"}   # the demo's 2nd site
EXT = "evaluate_external@demo_site"
CLASSIFIERS = both("train", "calibrate", "evaluate", "embed", "tsne_knn", "explain") | {
    "compare_models", "summary", EXT}
ALL = CLASSIFIERS | SITE | {"check_params", "make_demo", "prepare", "train_autoencoder",
                            "evaluate_anomaly", "make_demo_site", "list_external",
                            "geometry_baseline"}


def smk_planned(out: str) -> set[str]:
    """Stage names (as in dvc.yaml) of the jobs a ``snakemake -n`` prints."""
    jobs, rule, wildcards = set(), None, {}
    for line in out.splitlines() + [""]:
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m or not line.strip():
            if rule and rule != "all":
                name = stage_name(JobSpec(rule, wildcards, "", {}, {}, None, 1, {}))
                jobs.add(f"{name}@{wildcards['set']}" if "set" in wildcards else name)
            rule, wildcards = (m.group(1), {}) if m else (None, {})
        elif rule and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            wildcards = dict(p.strip().split("=", 1) for p in pairs)
    return jobs


def dvc_planned(out: str) -> set[str]:
    """Stages a ``dvc repro`` ran (its log)."""
    return set(re.findall(r"Running stage '([^']+)'", out))


def dvc_changed(work: Path, env: dict, *targets: str) -> set[str]:
    """Stages ``dvc status`` finds changed: the ones ``dvc repro`` runs first. (A dry run
    cannot plan a new external set: its second stage's input does not exist yet.)"""
    out = run([str(BIN / "dvc"), "status", "--json", *targets], work, env=env).stdout
    return set(json.loads(out or "{}"))


def plans(work: Path, env: dict) -> tuple[set[str], set[str]]:
    smk = run([str(BIN / "snakemake"), "--cores", "2", "all", "-n"], work, env=env)
    return dvc_changed(work, env), smk_planned(smk.stdout + smk.stderr)


def set_param(key: str, value):
    def edit(work: Path) -> None:
        path = work / "params.yaml"
        params = yaml.safe_load(path.read_text())
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        assert last in node or parents == ["external"], key
        node[last] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return edit


def append_comment(module: str):
    def edit(work: Path) -> None:
        path = work / "src/pneumocxr" / module
        path.write_text(path.read_text() + "\n# an edit that changes no behaviour\n")
    return edit


def touch(relpath: str):
    def edit(work: Path) -> None:
        (work / relpath).touch()
    return edit


#: edit -> (stages DVC plans: the direct ones, stages Snakemake plans: direct + downstream)
TABLE = [
    ("nothing", lambda work: None, set(), set()),
    ("progress (display only)", set_param("progress", True), {"check_params"}, set()),
    ("seed", set_param("seed", 7),
     both("train", "evaluate", "tsne_knn", "explain") | {
         "check_params", "train_autoencoder", "evaluate_anomaly", "geometry_baseline", "summary",
         EXT},
     ALL - {"make_demo", "prepare", "make_demo_site", "list_external",
            "prepare_external@demo_site"}),
    ("data.split_seed", set_param("data.split_seed", 3), {"check_params", "prepare"},
     ALL - {"make_demo", "make_demo_site", "list_external"}),
    ("prepare.clahe.clip_limit", set_param("prepare.clahe.clip_limit", 3.0),
     {"check_params", "prepare"}, ALL - {"make_demo", "make_demo_site", "list_external"}),
    ("train.epochs", set_param("train.epochs", 7), {"check_params"} | both("train"),
     {"check_params"} | CLASSIFIERS),
    ("train.three_class.lr", set_param("train.three_class.lr", 0.002),
     {"check_params", f"train_{T}"},
     {"check_params", "compare_models", "summary", EXT} | {
         f"{s}_{T}" for s in ("train", "calibrate", "evaluate", "embed", "tsne_knn", "explain")}),
    ("calibrate.rule", set_param("calibrate.rule", "sensitivity"),
     {"check_params"} | both("calibrate"),
     {"check_params", "compare_models", "summary", EXT} | both("calibrate", "evaluate")),
    ("evaluate.n_boot", set_param("evaluate.n_boot", 100),
     {"check_params", "geometry_baseline", "summary", EXT} | both("evaluate"),
     {"check_params", "geometry_baseline", "summary", "compare_models", EXT} | both("evaluate")),
    ("report.test_label", set_param("report.test_label", "dev test"),
     {"check_params", "compare_models", "summary"}, {"check_params", "compare_models", "summary"}),
    ("geometry.folds", set_param("geometry.folds", 4), {"check_params", "geometry_baseline"},
     {"check_params", "geometry_baseline", "summary"}),
    ("embed.tsne.perplexity", set_param("embed.tsne.perplexity", 10),
     {"check_params"} | both("tsne_knn"), {"check_params", "summary", EXT} | both("tsne_knn")),
    ("anomaly.train.epochs", set_param("anomaly.train.epochs", 3),
     {"check_params", "train_autoencoder"},
     {"check_params", "train_autoencoder", "evaluate_anomaly", "summary", EXT}),
    ("anomaly.score.method", set_param("anomaly.score.method", "mse"),
     {"check_params", "evaluate_anomaly"},
     {"check_params", "evaluate_anomaly", "summary", EXT}),
    ("explain.occlusion.window", set_param("explain.occlusion.window", 8),
     {"check_params"} | both("explain"), {"check_params", "summary"} | both("explain")),
    ("demo.site.noise", set_param("demo.site.noise", 0.05), {"check_params", "make_demo_site"},
     {"check_params", "make_demo_site", "summary"} | SITE),
    ("add an external set", set_param("external.site3", {"path": "data/demo/site2"}),
     {"check_params", "list_external", "prepare_external@site3", "evaluate_external@site3"},
     {"check_params", "list_external", "prepare_external@site3", "evaluate_external@site3",
      "summary"}),
    ("module knn.py", append_comment("knn.py"), both("tsne_knn") | {EXT},
     both("tsne_knn") | {"summary", EXT}),
    ("module calibration.py", append_comment("calibration.py"),
     both("calibrate", "evaluate") | {EXT},
     both("calibrate", "evaluate") | {"compare_models", "summary", EXT}),
    ("touch a module (timestamp only)", touch("src/pneumocxr/train.py"), set(), set()),
]


@pytest.fixture(scope="module")
def workspace(demo_workspace):
    work, env = demo_workspace
    assert "up to date" in run([str(BIN / "dvc"), "status"], work, env=env).stdout
    return work, env


def _snapshot(work: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in [work / "params.yaml", *(work / "src").rglob("*.py")]}


def _restore(work: Path, snap: dict[str, bytes]) -> None:
    for path, data in snap.items():
        Path(path).write_bytes(data)


@pytest.mark.parametrize("name,edit,dvc_expected,smk_expected", TABLE, ids=[r[0] for r in TABLE])
def test_each_edit_plans_exactly_these_stages(workspace, name, edit, dvc_expected, smk_expected):
    work, env = workspace
    snap = _snapshot(work)
    try:
        edit(work)
        dvc, smk = plans(work, env)
    finally:
        _restore(work, snap)
    assert dvc == dvc_expected, f"DVC planned {sorted(dvc)}"
    assert smk == smk_expected, f"Snakemake planned {sorted(smk)}"


def test_both_engines_wrote_byte_identical_outputs(workspace):
    """The DVC run and the Snakemake rerun of every job on the same params left dvc status
    clean: same inputs, params, machine and threads give the same bytes under both."""
    work, env = workspace
    assert dvc_changed(work, env) == set()


def _mtimes(work: Path, paths: list[str]) -> dict[str, float]:
    return {p: (work / p).stat().st_mtime_ns for p in paths}


def test_a_code_edit_that_reproduces_the_same_bytes_stops_there_in_dvc(workspace):
    work, env = workspace
    snap = _snapshot(work)
    try:
        append_comment("embed.py")(work)
        proc = run([str(BIN / "dvc"), "repro"], work, env=env)
        # the edited stages ran; their outputs came out byte-identical, so summary (which
        # reads tsne_knn's metrics) did not
        assert dvc_planned(proc.stdout + proc.stderr) == both("embed", "tsne_knn") | {EXT}
        assert "up to date" in run([str(BIN / "dvc"), "status"], work, env=env).stdout
    finally:   # back to the committed code (reruns the two stages, to the same bytes)
        _restore(work, snap)
        run([str(BIN / "dvc"), "repro"], work, env=env)
    assert dvc_changed(work, env) == set()


def test_a_threshold_rule_change_reruns_calibration_and_evaluation_not_training(workspace):
    work, env = workspace
    trained = ["results/models/binary/resnet18/best.pt",
               "results/models/three_class/resnet18/best.pt",
               "results/models/autoencoder/best.pt"]
    before = _mtimes(work, trained)
    snap = _snapshot(work)
    try:
        set_param("calibrate.rule", "sensitivity")(work)
        proc = run([str(BIN / "snakemake"), "--cores", "2", "all"], work, env=env)
        assert "Finished jobid" in proc.stdout + proc.stderr
        assert _mtimes(work, trained) == before            # no model retrained
        cal = json.loads((work / "results/models/binary/resnet18/calibration.json").read_text())
        assert cal["operating_threshold"]["rule"] == "sensitivity"
        metrics = json.loads((work / "results/classify/binary/resnet18/metrics.json").read_text())
        assert metrics["operating_threshold"]["rule"] == "sensitivity"
    finally:   # back to the workspace's params: the same jobs rerun, to the same bytes
        _restore(work, snap)
        run([str(BIN / "snakemake"), "--cores", "2", "all"], work, env=env)
    assert _mtimes(work, trained) == before
    assert dvc_changed(work, env) == set()


# ----------------------------------------------------------------------------- raw data


@pytest.fixture(scope="module")
def raw_workspace(repo_root, tmp_path_factory):
    """A folder of real-layout images (the demo generator's) as data.source kermany; only the
    make_demo, check_params and prepare stages run, under both engines."""
    import os

    from pneumocxr.config import deep_merge
    from pneumocxr.data.demo import generate_demo
    from test_scaleout import TINY

    work = copy_workflow(repo_root, tmp_path_factory.mktemp("raw_workspace"))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(work / "src")}
    params = yaml.safe_load((work / "params.yaml").read_text())
    params = deep_merge(params, yaml.safe_load((work / "config/demo.yaml").read_text()))
    params = deep_merge(params, {**TINY, "data": {**TINY["data"], "source": "kermany",
                                                  "root": "data/raw/chest_xray"}})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    generate_demo(work / "data/raw/chest_xray", **{k: params["demo"][k] for k in (
        "n_train", "n_test", "n_val", "size", "seed")})
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"]):
        run(cmd, work)
    run([str(BIN / "dvc"), "init", "-q"], work, env=env)
    run([str(BIN / "dvc"), "repro", "prepare"], work, env=env)
    run([str(BIN / "snakemake"), "--cores", "2", "results/data/summary.json", "--forceall"],
        work, env=env)
    return work, env


def raw_plans(work: Path, env: dict) -> tuple[set[str], set[str]]:
    smk = run([str(BIN / "snakemake"), "--cores", "2", "results/data/summary.json", "-n"], work,
              env=env)
    return dvc_changed(work, env, "prepare"), smk_planned(smk.stdout + smk.stderr)


def test_touching_a_raw_image_reruns_nothing(raw_workspace):
    work, env = raw_workspace
    victim = sorted((work / "data/raw/chest_xray/train/NORMAL").iterdir())[0]
    victim.touch()
    assert raw_plans(work, env) == (set(), set())


def test_replacing_a_raw_image_reruns_prepare(raw_workspace):
    work, env = raw_workspace
    files = sorted((work / "data/raw/chest_xray/train/NORMAL").iterdir())
    saved = files[0].read_bytes()
    files[0].write_bytes(files[1].read_bytes())
    try:
        assert raw_plans(work, env) == ({"prepare"}, {"prepare"})
    finally:
        files[0].write_bytes(saved)
        shutil.copystat(files[1], files[0])
