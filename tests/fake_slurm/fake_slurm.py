#!/usr/bin/env python3
"""A one-node SLURM stand-in for tests: sbatch, squeue, sacct, scancel, srun, sinfo, scontrol.

``install(bin_dir)`` writes one small wrapper per command name that runs this file with the
command as its first argument. It implements what snakemake-executor-plugin-slurm
2.8 and snakemake-executor-plugin-slurm-jobstep 0.6 call, with the output formats they parse:

* ``sbatch --parsable ... --wrap=CMD`` (or a script on stdin/file) checks the options the way
  sbatch does (unknown option -> exit 1; a request larger than the node -> "Requested node
  configuration is not available"), prints the job id, and runs the job script in the
  background in ``-D`` with the ``SLURM_*`` variables of an allocation, ``--output`` receiving
  stdout and stderr (``%j`` expanded), the ``-t`` limit enforced (state TIMEOUT).
* ``squeue --format=%i|%T --states=all --noheader --name RUN`` and
  ``sacct -X --parsable2 --noheader --format=JobIdRaw,State --name RUN`` print ``id|STATE``
  (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED).
* ``scancel ID...`` kills the job's process group (state CANCELLED).
* ``srun [options] CMD...`` runs CMD as a job step; it refuses to run outside an allocation.
* ``sinfo -o %P`` lists the one partition (``main*``); ``scontrol show config`` reports
  MinJobAge and MaxArraySize.

State lives in ``$FAKE_SLURM_STATE``: one JSON file per job, every sbatch call in
``sbatch_calls.jsonl``, every job step in ``srun_calls.jsonl``. The one node's size:
``FAKE_SLURM_CPUS`` (default: this machine's CPUs), ``FAKE_SLURM_MEM_MB`` (default 64000),
``FAKE_SLURM_GPUS`` (default 1; a job granted one sees ``SLURM_GPUS`` but no real device).
Standard library only, so it runs under any Python 3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "srun", "sinfo", "scontrol")
PARTITION = "main"
FINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"}


def install(bin_dir: Path, python: str = sys.executable) -> Path:
    """Put the SLURM command names in ``bin_dir`` (shell wrappers that run this file with
    ``python``); returns bin_dir, to go first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    me = Path(__file__).resolve()
    for name in COMMANDS:
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} {shlex.quote(str(me))} {name} "$@"\n')
        wrapper.chmod(0o755)
    return bin_dir


# ----------------------------------------------------------------------------- state


def state_dir() -> Path:
    d = Path(os.environ.get("FAKE_SLURM_STATE", Path(os.environ.get("TMPDIR", "/tmp")) / "fake-slurm"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def node() -> dict:
    return {"cpus": int(os.environ.get("FAKE_SLURM_CPUS", os.cpu_count() or 1)),
            "mem_mb": int(os.environ.get("FAKE_SLURM_MEM_MB", 64000)),
            "gpus": int(os.environ.get("FAKE_SLURM_GPUS", 1))}


def job_file(jobid: str) -> Path:
    return state_dir() / f"job_{jobid}.json"


def read_job(jobid: str) -> dict | None:
    try:
        return json.loads(job_file(jobid).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_job(job: dict) -> None:
    path = job_file(job["id"])
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(job))
    tmp.replace(path)


def update_job(jobid: str, **changes) -> dict:
    job = read_job(jobid) or {}
    if job.get("state") in FINAL and changes.get("state") not in (None, job.get("state")):
        return job                                   # a finished job stays finished
    job.update(changes)
    write_job(job)
    return job


def all_jobs() -> list[dict]:
    jobs = []
    for path in sorted(state_dir().glob("job_*.json")):
        try:
            jobs.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return sorted(jobs, key=lambda j: int(j["id"]))


def next_jobid() -> str:
    counter = state_dir() / "counter"
    fd = os.open(counter, os.O_RDWR | os.O_CREAT)
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 32).decode().strip()
        value = int(raw) + 1 if raw else 1001
        os.lseek(fd, 0, 0)
        os.ftruncate(fd, 0)
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
    return str(value)


def fail(command: str, message: str, code: int = 1) -> int:
    print(f"{command}: error: {message}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse that fails the way SLURM's tools do (message on stderr, exit 1)."""

    def error(self, message):  # noqa: D401 - argparse API
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1)


# ----------------------------------------------------------------------------- sbatch


def parse_minutes(value: str) -> float:
    """SLURM time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    days = 0
    if "-" in value:
        d, value = value.split("-", 1)
        days = int(d)
        parts = [int(p) for p in value.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
        return days * 1440 + h * 60 + m + s / 60
    parts = [int(p) for p in value.split(":")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0] + parts[1] / 60
    return parts[0] * 60 + parts[1] + parts[2] / 60


def parse_mem_mb(value: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", value.upper())
    if not m:
        raise ValueError(value)
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * scale)


def sbatch(argv: list[str]) -> int:
    p = _Parser(prog="sbatch", add_help=False)
    p.add_argument("--parsable", action="store_true")
    p.add_argument("-J", "--job-name")
    p.add_argument("-o", "--output")
    p.add_argument("-e", "--error")
    p.add_argument("--export")
    p.add_argument("--comment")
    p.add_argument("-A", "--account")
    p.add_argument("-p", "--partition")
    p.add_argument("-M", "--clusters")
    p.add_argument("-t", "--time")
    p.add_argument("-C", "--constraint")
    p.add_argument("-q", "--qos")
    p.add_argument("--mem")
    p.add_argument("--mem-per-cpu")
    p.add_argument("-N", "--nodes")
    p.add_argument("--requeue", action="store_true")
    p.add_argument("--no-requeue", action="store_true")
    p.add_argument("--reservation")
    p.add_argument("-x", "--exclude")
    p.add_argument("-n", "--ntasks", type=int)
    p.add_argument("--ntasks-per-gpu", type=int)
    p.add_argument("--ntasks-per-node", type=int)
    p.add_argument("-c", "--cpus-per-task", type=int)
    p.add_argument("--cpus-per-gpu", type=int)
    p.add_argument("-G", "--gpus")
    p.add_argument("--gres")
    p.add_argument("-D", "--chdir")
    p.add_argument("--wrap")
    p.add_argument("-a", "--array")
    p.add_argument("script", nargs="?")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)

    if args.wrap is not None and args.script:
        return fail("sbatch", "script arguments not permitted with --wrap option")
    if args.array:
        return fail("sbatch", "job arrays are not supported by this stand-in")
    if args.wrap is not None:
        script = "#!/bin/sh\n" + args.wrap + "\n"
    elif args.script in (None, "-", "/dev/stdin"):
        script = sys.stdin.read()
    else:
        script = Path(args.script).read_text()
    if not script.startswith("#!"):
        return fail("sbatch", "This does not look like a batch script.  The first\n"
                              "sbatch: error: line must start with #! followed by the path to an interpreter.")

    partition = args.partition or PARTITION
    if partition != PARTITION:
        return fail("sbatch", "Batch job submission failed: Invalid partition name specified")
    size = node()
    cpus = args.cpus_per_task or 1
    ntasks = args.ntasks or 1
    gpus = 0
    if args.gpus:
        gpus = int(args.gpus.rsplit(":", 1)[-1])
    if args.gres:
        m = re.fullmatch(r"gpu(?::[\w.]+)?:(\d+)", args.gres)
        gpus = max(gpus, int(m.group(1)) if m else 0)
    if args.cpus_per_gpu:
        cpus = args.cpus_per_gpu * max(gpus, 1)
    try:
        mem_mb = (parse_mem_mb(args.mem) if args.mem
                  else parse_mem_mb(args.mem_per_cpu) * cpus * ntasks if args.mem_per_cpu
                  else 1000)
        minutes = parse_minutes(args.time) if args.time else None
    except ValueError as err:
        return fail("sbatch", f"Invalid value {err}")
    if cpus * ntasks > size["cpus"] or mem_mb > size["mem_mb"] or gpus > size["gpus"]:
        return fail("sbatch", "Batch job submission failed: Requested node configuration is not available")

    jobid = next_jobid()
    workdir = Path(args.chdir or os.getcwd()).resolve()
    output = (args.output or "slurm-%j.out").replace("%j", jobid).replace("%A", jobid).replace("%a", "0")
    output_path = Path(output) if Path(output).is_absolute() else workdir / output
    script_path = state_dir() / f"job_{jobid}.sh"
    script_path.write_text(script)
    job = {"id": jobid, "name": args.job_name or "sbatch", "comment": args.comment or "",
           "account": args.account or "", "partition": partition, "state": "PENDING",
           "cpus": cpus, "ntasks": ntasks, "mem_mb": mem_mb, "gpus": gpus,
           "time_limit_min": minutes, "workdir": str(workdir), "output": str(output_path),
           "script": str(script_path), "submitted": time.time(), "exit_code": None,
           "pid": None, "nodelist": "localhost"}
    write_job(job)
    with open(state_dir() / "sbatch_calls.jsonl", "a") as log:
        log.write(json.dumps({"id": jobid, "argv": argv, "comment": job["comment"]}) + "\n")

    env = dict(os.environ) if args.export in (None, "ALL") else {
        k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "USER", "FAKE_SLURM_STATE")}
    env.update({"SLURM_JOB_ID": jobid, "SLURM_JOBID": jobid, "SLURM_JOB_NAME": job["name"],
                "SLURM_CPUS_PER_TASK": str(cpus), "SLURM_CPUS_ON_NODE": str(cpus * ntasks),
                "SLURM_NTASKS": str(ntasks), "SLURM_MEM_PER_NODE": str(mem_mb),
                "SLURM_JOB_PARTITION": partition, "SLURM_SUBMIT_DIR": os.getcwd(),
                "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1",
                "FAKE_SLURM_STATE": str(state_dir())})
    if gpus:
        env["SLURM_GPUS"] = str(gpus)
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with open(output_path, "ab") as out:
        subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--run-job", jobid],
                         cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True)
    print(jobid if args.parsable else f"Submitted batch job {jobid}")
    return 0


def run_job(jobid: str) -> int:
    """The allocation: runs the job script, records its end state (runs detached)."""
    job = read_job(jobid)
    proc = subprocess.Popen(["/bin/sh", job["script"]], cwd=job["workdir"],
                            start_new_session=True)
    update_job(jobid, state="RUNNING", pid=proc.pid, started=time.time())
    limit = job["time_limit_min"] * 60 if job["time_limit_min"] else None
    try:
        rc = proc.wait(timeout=limit)
        state = "COMPLETED" if rc == 0 else "FAILED"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc, state = proc.wait(), "TIMEOUT"
        print(f"slurmstepd: error: *** JOB {jobid} CANCELLED DUE TO TIME LIMIT ***", flush=True)
    if (read_job(jobid) or {}).get("state") != "CANCELLED":
        update_job(jobid, state=state, exit_code=rc, ended=time.time())
    return 0


# ----------------------------------------------------------------------------- queries


def squeue(argv: list[str]) -> int:
    p = _Parser(prog="squeue", add_help=False)
    p.add_argument("-o", "--format", default="%i|%T")
    p.add_argument("-t", "--states", default="")
    p.add_argument("-h", "--noheader", action="store_true")
    p.add_argument("-n", "--name")
    p.add_argument("-j", "--jobs")
    p.add_argument("-u", "--user")
    p.add_argument("-M", "--clusters")
    args = p.parse_args(argv)
    fields = {"%i": "id", "%T": "state", "%j": "name", "%P": "partition"}
    states = args.states.upper()
    rows = []
    for job in all_jobs():
        if args.name and job["name"] != args.name:
            continue
        if args.jobs and job["id"] not in args.jobs.split(","):
            continue
        if job["state"] in FINAL and states != "ALL":
            continue                                  # plain squeue only lists live jobs
        rows.append(re.sub(r"%[iTjP]", lambda m: str(job[fields[m.group(0)]]), args.format))
    if not args.noheader:
        print(re.sub(r"%[iTjP]", lambda m: {"id": "JOBID", "state": "STATE", "name": "NAME",
                                           "partition": "PARTITION"}[fields[m.group(0)]], args.format))
    print("\n".join(rows))
    return 0


SACCT_FIELDS = {"jobidraw": "id", "jobid": "id", "state": "state", "jobname": "name",
                "account": "account", "partition": "partition", "nodelist": "nodelist",
                "exitcode": "exit_code", "reason": None, "alloccpus": "cpus", "reqmem": "mem_mb"}


def sacct(argv: list[str]) -> int:
    p = _Parser(prog="sacct", add_help=False)
    p.add_argument("-X", "--allocations", action="store_true")
    p.add_argument("-P", "--parsable2", action="store_true")
    p.add_argument("-n", "--noheader", action="store_true")
    p.add_argument("-u", "--user")
    p.add_argument("-o", "--format", default="JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode")
    p.add_argument("-S", "--starttime")
    p.add_argument("-E", "--endtime")
    p.add_argument("--name")
    p.add_argument("-j", "--jobs")
    p.add_argument("-M", "--clusters")
    args, _ = p.parse_known_args(argv)                 # sacct ignores trailing garbage
    fields = []
    for spec in args.format.split(","):
        name = spec.split("%")[0].strip().lower()
        if name not in SACCT_FIELDS:
            return fail("sacct", f"Invalid field requested: \"{spec}\"")
        fields.append((name, spec.split("%")[0]))
    wanted = None
    if args.jobs:
        wanted = args.jobs.split(",")
        if any("." in j for j in wanted):             # job steps are not recorded here
            return 0
    rows = []
    for job in all_jobs():
        if args.name and job["name"] != args.name:
            continue
        if wanted is not None and job["id"] not in wanted:
            continue
        values = []
        for name, _ in fields:
            key = SACCT_FIELDS[name]
            value = "" if key is None else job.get(key)
            if name == "exitcode":
                value = f"{value if value is not None else 0}:0"
            values.append("" if value is None else str(value))
        rows.append(values)
    if args.parsable2:
        if not args.noheader:
            print("|".join(label for _, label in fields))
        for values in rows:
            print("|".join(values))
    else:
        if not args.noheader:
            print(" ".join(f"{label:>12}" for _, label in fields))
        for values in rows:
            print(" ".join(f"{v:>12}" for v in values))
    return 0


def scancel(argv: list[str]) -> int:
    p = _Parser(prog="scancel", add_help=False)
    p.add_argument("-M", "--clusters")
    p.add_argument("jobs", nargs="+")
    args = p.parse_args(argv)
    for jobid in args.jobs:
        job = read_job(jobid.split("_")[0])
        if job is None:
            print(f"scancel: error: Kill job error on job id {jobid}: Invalid job id specified",
                  file=sys.stderr)
            continue
        if job["state"] in FINAL:
            continue
        update_job(job["id"], state="CANCELLED", ended=time.time())
        if job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    return 0


def srun(argv: list[str]) -> int:
    if "SLURM_JOB_ID" not in os.environ:
        return fail("srun", "this stand-in only runs job steps inside an sbatch allocation")
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1                                        # options are all --opt=value / -n1 forms
    if i == len(argv):
        return fail("srun", "no executable given")
    with open(state_dir() / "srun_calls.jsonl", "a") as log:
        log.write(json.dumps({"job": os.environ["SLURM_JOB_ID"], "options": argv[:i],
                              "command": argv[i:]}) + "\n")
    os.environ["SLURM_STEP_ID"] = "0"
    os.execvp(argv[i], argv[i:])


def sinfo(argv: list[str]) -> int:
    p = _Parser(prog="sinfo", add_help=False)
    p.add_argument("-o", "--format", default="%P %a %l %D %t %N")
    p.add_argument("-h", "--noheader", action="store_true")
    args, _ = p.parse_known_args(argv)
    values = {"%P": f"{PARTITION}*", "%a": "up", "%l": "infinite", "%D": "1", "%t": "idle",
              "%N": "localhost", "%c": str(node()["cpus"]), "%m": str(node()["mem_mb"]),
              "%G": f"gpu:{node()['gpus']}"}
    heads = {"%P": "PARTITION", "%a": "AVAIL", "%l": "TIMELIMIT", "%D": "NODES", "%t": "STATE",
             "%N": "NODELIST", "%c": "CPUS", "%m": "MEMORY", "%G": "GRES"}
    if not args.noheader:
        print(re.sub(r"%\w", lambda m: heads.get(m.group(0), "?"), args.format))
    print(re.sub(r"%\w", lambda m: values.get(m.group(0), "?"), args.format))
    return 0


def scontrol(argv: list[str]) -> int:
    if argv[:2] == ["show", "config"]:
        print("Configuration data as of fake\nClusterName             = fake\n"
              "MaxArraySize            = 1001\nMinJobAge               = 300 sec\n"
              "SLURM_VERSION           = 24.05.0")
        return 0
    if argv[:2] == ["show", "partition"]:
        size = node()
        print(f"PartitionName={PARTITION}\n   Default=YES MaxNodes=1 MaxTime=UNLIMITED\n"
              f"   TotalCPUs={size['cpus']} TotalNodes=1 MaxMemPerNode={size['mem_mb']}\n"
              f"   TRES=cpu={size['cpus']},mem={size['mem_mb']}M,node=1,gres/gpu={size['gpus']}")
        return 0
    return fail("scontrol", f"invalid entity: {' '.join(argv)} for keyword: show")


def main() -> int:
    if sys.argv[1:2] == ["--run-job"]:
        return run_job(sys.argv[2])
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        return globals()[sys.argv[1]](sys.argv[2:])
    print(f"usage: fake_slurm.py {{{','.join(COMMANDS)}}} [ARGS...]  (see install())",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
