"""The flow deployed on a real `prefect server start`, both ways it can run without other infrastructure.

- `soupline serve` (a subprocess): the deployment `soupline-pipeline/served`, runs triggered with
  `run_deployment`: a cold run completes and leaves the report/metrics artifacts, a second run is
  all cache hits, a bad `overrides` parameter fails the run in one line before any task runs.
- `prefect work-pool create` + `prefect deploy --all` (prefect.yaml) + `prefect worker start`: the
  `nightly` deployment runs in the same workspace and finds every stage cached.
- Bad input, each one line: a PREFECT_API_URL that does not answer, a pool that does not exist.

Server, serve process and worker are subprocesses with PREFECT_HOME in a temp folder; this
process talks to the server through PREFECT_API_URL. Same tiny project as tests/test_flows.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect")

from tests.conftest import ROOT, tiny_project  # noqa: E402
from tests.conftest import run_cmd as _run  # noqa: E402
from soupline.report import self_contained  # noqa: E402

BIN = Path(sys.executable).parent
STAGES = {"prepare", "embed", "select", "soup", "evaluate", "report"}
INGREDIENTS = {"train-lr0.005-seed0", "train-lr0.005-seed1", "train-lr0.01-seed0", "train-lr0.01-seed1"}
RUN_TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], cwd: Path, env: dict, log: Path, ctrl_c: bool = False,
           ctrl_c_ignored: bool = False) -> subprocess.Popen:
    """`cmd` in a session of its own, its output in `log`. `ctrl_c`: with SIGINT's and SIGHUP's default actions, as a
    command started in a terminal has, even where this test run was started in the background (`pytest &` ignores
    SIGINT, `nohup pytest` SIGHUP, and the child would inherit that). `ctrl_c_ignored`: SIGHUP's default action but
    SIGINT ignored, as `cmd &` in a script or `trap '' INT` start it."""
    restore = (lambda: [signal.signal(signal.SIGINT, signal.SIG_IGN if ctrl_c_ignored else signal.SIG_DFL),
                        signal.signal(signal.SIGHUP, signal.SIG_DFL)]) if ctrl_c or ctrl_c_ignored else None
    with open(log, "wb") as out:  # the child keeps its own handle
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=restore)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started (server / runner / worker and their children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model):
    """The tiny project of tests/test_flows.py, with prefect.yaml."""
    return tiny_project(tmp_path_factory.mktemp("served-repo"), tiny_model, ("flows", "prefect.yaml"))


@pytest.fixture(scope="module")
def env(repo, tmp_path_factory) -> dict:
    """Environment of every Prefect subprocess: its own PREFECT_HOME, no analytics, fast polling, and the
    project's copy of the library first on the path (cache keys hash the library's source: edits to the
    checkout while the tests run must not change them between two runs)."""
    home = tmp_path_factory.mktemp("prefect-home")
    pythonpath = [str(repo / "src"), str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
    out = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": os.pathsep.join(pythonpath),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "COLUMNS": "1000",
           "PATH": str(BIN) + os.pathsep + os.environ["PATH"]}
    out.pop("PREFECT_API_URL", None)
    out.pop("PREFECT_PROFILE", None)
    return out


def _start_server(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """A real `prefect server start` on a free port (env's PREFECT_HOME), once /api/health answers: (process, URL)."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  Path(env["PREFECT_HOME"]), env, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{_tail(log)}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no /api/health after 90 s:\n{_tail(log)}"
            time.sleep(0.5)
    except BaseException:
        _stop(proc)
        raise


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    """A real `prefect server start` on a free port; this process's client points at it."""
    from prefect.settings import temporary_settings

    proc, url = _start_server(env, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        env["PREFECT_API_URL"] = url
        with pytest.MonkeyPatch.context() as mp:
            for key in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED"):
                mp.setenv(key, env[key])
            with temporary_settings(updates={"home": env["PREFECT_HOME"], "api.url": url,
                                             "server.analytics_enabled": False}):
                yield url
    finally:
        env.pop("PREFECT_API_URL", None)
        _stop(proc)


def _deployment(name: str, proc: subprocess.Popen, log: Path, wait: float = 90):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                assert proc.poll() is None, f"{proc.args} exited ({proc.returncode}):\n{_tail(log)}"
                assert time.monotonic() < deadline, f"no deployment {name} after {wait} s:\n{_tail(log)}"
                time.sleep(0.5)


@pytest.fixture(scope="module")
def served(repo, server, env, tmp_path_factory):
    """`soupline serve` in the project: yields the deployment `soupline-pipeline/served` while it runs."""
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    proc = _start([sys.executable, "-m", "soupline.cli", "serve"], repo, {**env, "PWD": str(repo)}, log)
    try:
        yield _deployment("soupline-pipeline/served", proc, log), log
    finally:
        _stop(proc)


def _trigger(name: str, log: Path, **parameters):
    from prefect.deployments import run_deployment

    start = time.perf_counter()
    run = run_deployment(name, parameters=parameters, timeout=RUN_TIMEOUT, poll_interval=1)
    assert run.state.is_final(), f"{name} still {run.state.name} after {RUN_TIMEOUT} s:\n{_tail(log)}"
    return run, time.perf_counter() - start


def _task_states(flow_run_id) -> dict[str, str]:
    """{task name (train: its run name) -> state name} of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # run names: `prepare-f37` (task name + a suffix), `train-lr0.005-seed0` (the flow's task_run_name)
    return {r.name if r.name.startswith("train-lr") else r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


@pytest.fixture(scope="module")
def cold_run(served):
    deployment, log = served
    return _trigger("soupline-pipeline/served", log)


def test_serve_registers_a_nightly_deployment(served, repo):
    deployment, _ = served
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    assert deployment.parameters == {"root": str(repo), "params_path": "params.yaml"}
    assert deployment.entrypoint == "flows/pipeline.py:pipeline" and deployment.work_pool_name is None


def test_served_run_completes_with_artifacts(cold_run, repo):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run, seconds = cold_run
    assert run.state.is_completed(), run.state
    states = _task_states(run.id)
    train = {k for k in states if k.startswith("train-lr")}
    assert train == INGREDIENTS, states
    assert set(states) == STAGES | INGREDIENTS | {"train-sweep", "dvc-commit"} and set(states.values()) == {"Completed"}, \
        states
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))}
    assert found["soupline-report"].type == "markdown"
    assert found["soupline-report"].data == self_contained(repo / "data/reports/report.md")
    assert found["soupline-metrics"].type == "table" and "soup:greedy" in found["soupline-metrics"].data
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    print(f"served cold run: {seconds:.1f} s")


def test_second_served_run_is_all_cached(cold_run, served, repo):
    run, seconds = _trigger("soupline-pipeline/served", served[1])
    assert run.state.is_completed(), run.state
    states = _task_states(run.id)
    assert states.pop("dvc-commit") == "Completed"  # never cached: it records the workspace each time
    assert states.pop("train-sweep") == "Completed"  # never cached: it prunes ingredients left from older sweeps
    assert states == dict.fromkeys(STAGES | INGREDIENTS, "Cached"), states
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    print(f"served cached run: {seconds:.1f} s (cold {cold_run[1]:.1f} s)")


def test_two_runs_triggered_at_once_run_one_after_the_other(cold_run, served):
    """The schedule firing during a triggered run, or two triggers: `soupline serve` runs one at a time (they share
    the workspace), so the second waits for the first instead of failing on the workspace lock ("data is in use")."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    ids = [run_deployment("soupline-pipeline/served", timeout=0).id for _ in range(2)]
    deadline = time.monotonic() + RUN_TIMEOUT
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(run.state.is_final() for run in runs):
                break
            assert time.monotonic() < deadline, f"still {[run.state.name for run in runs]}:\n{_tail(served[1])}"
            time.sleep(1)
    assert all(run.state.is_completed() for run in runs), [(run.state.name, run.state.message) for run in runs]
    first, second = sorted(runs, key=lambda run: run.start_time)
    assert second.start_time >= first.end_time  # one after the other, not side by side


def test_bad_override_parameter_fails_the_run_in_one_line(served):
    run, _ = _trigger("soupline-pipeline/served", served[1], overrides=["select.budget=-1"])
    assert run.state.is_failed(), run.state
    assert "\n" not in run.state.message and "params: select.budget: budget must be > 0" in run.state.message
    assert _task_states(run.id) == {}  # failed before any task ran
    logs = _run_logs(run.id, "select.budget")  # what the UI shows: the reason in one line, no traceback
    assert not any("Traceback" in line for line in logs), logs  # (flows/user_errors.py)


def _run_logs(flow_run_id, awaited: str, seconds: float = 60) -> list[str]:
    """The messages the server holds for a flow run, once one of them contains `awaited` (the run's process sends
    its logs in batches, possibly after its final state): a failure when none does within `seconds`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            logs = [log.message for log in
                    client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
            if any(awaited in line for line in logs) or time.monotonic() > deadline:
                assert any(awaited in line for line in logs), f"no log of run {flow_run_id} says {awaited!r}: {logs}"
                return logs
            time.sleep(1)


def test_parameter_of_the_wrong_type_is_refused(served):
    """The deployment enforces the flow's parameter schema: no run is created at all."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as err:
        run_deployment("soupline-pipeline/served", parameters={"overrides": "select.budget=-1"}, timeout=0)
    assert err.value.response.status_code == 409
    assert "Validation failed for field 'overrides'" in err.value.response.json()["detail"]


@pytest.mark.slow  # about 60 s: a worker process runs the deployment
def test_work_pool_deploy_and_worker_share_the_cache(cold_run, repo, server, env, tmp_path):
    """The documented route: pool, `prefect deploy --all` (prefect.yaml), a process worker; same workspace."""
    from prefect.client.orchestration import get_client

    prefect = str(BIN / "prefect")
    envd = {**env, "PWD": str(repo)}  # prefect.yaml's pull step records {{ $PWD }}
    for command in (["create", "soupline-process", "--type", "process"],
                    ["set-concurrency-limit", "soupline-process", "1"]):  # runs share the workspace: one at a time
        out = subprocess.run([prefect, "work-pool", *command], cwd=repo, env=envd, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=repo, env=envd, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and "soupline-pipeline/nightly" in out.stdout, out.stdout + out.stderr
    log = tmp_path / "worker.log"
    worker = _start([prefect, "worker", "start", "--pool", "soupline-process"], repo, envd, log)
    try:
        deployment = _deployment("soupline-pipeline/nightly", worker, log)
        assert deployment.work_pool_name == "soupline-process"
        with get_client(sync_client=True) as client:
            assert client.read_work_pool("soupline-process").concurrency_limit == 1
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(repo)}}]
        run, seconds = _trigger("soupline-pipeline/nightly", log)
        assert run.state.is_completed(), f"{run.state}\n{_tail(log)}"
    finally:
        _stop(worker)
    states = _task_states(run.id)
    assert states.pop("dvc-commit") == states.pop("train-sweep") == "Completed"
    assert states == dict.fromkeys(STAGES | INGREDIENTS, "Cached"), states  # the served runs' records
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    print(f"worker run (all cached): {seconds:.1f} s")


def test_deploy_to_missing_pool_is_one_line(repo, server, env, tmp_path):
    """`prefect deploy --all` before `prefect work-pool create`: prefect.yaml with a pool nobody created."""
    spec = (repo / "prefect.yaml").read_text().replace("name: soupline-process", "name: no-such-pool")
    assert "no-such-pool" in spec
    (tmp_path / "prefect.yaml").write_text(spec)
    out = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                          str(tmp_path / "prefect.yaml")], cwd=repo, env={**env, "PWD": str(repo)},
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    # Prefect's banner ("Deploying nightly"), then its error in one line (COLUMNS=1000: no wrapping)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert [line for line in lines if "no-such-pool" in line] == lines[-1:], lines
    assert lines[-1].startswith("This deployment configuration references work pool 'no-such-pool' which does not "
                                "exist."), lines
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert [d.name for d in client.read_deployments() if d.work_pool_name == "no-such-pool"] == []


def _serve_then_ctrl_c(repo, env, log, name: str, *extra: str, until: str, trigger: bool = False,
                       hang_up: bool = False):
    """`soupline serve --name NAME EXTRA...` (and a run of it triggered, with `trigger`), then Ctrl-C (SIGINT to the
    terminal's process group) once `until` is in its log; asserts exit code 130 and returns the triggered run.
    `hang_up`: SIGHUP to the serving process alone instead, exit code 129."""
    from prefect.deployments import run_deployment

    proc = _start([sys.executable, "-m", "soupline.cli", "serve", "--name", name, *extra], repo,
                  {**env, "PWD": str(repo)}, log, ctrl_c=True)
    run = None
    try:
        _deployment(f"soupline-pipeline/{name}", proc, log)
        if trigger:
            run = run_deployment(f"soupline-pipeline/{name}", timeout=0)
        deadline = time.monotonic() + RUN_TIMEOUT
        while until not in _tail(log):
            assert proc.poll() is None and time.monotonic() < deadline, _tail(log)
            time.sleep(0.5)
        time.sleep(2)
        if hang_up:
            os.kill(proc.pid, signal.SIGHUP)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 128 + (signal.SIGHUP if hang_up else signal.SIGINT), _tail(log)
    finally:
        _stop(proc)
    return run


def test_ctrl_c_on_serve_pauses_its_schedule_and_exits_130(repo, server, env, tmp_path):
    """Ctrl-C on `soupline serve`: Prefect pauses the schedule and its runner stops, and the command ends as `soupline
    run` does on Ctrl-C: one line, exit code 130 (it exited 0, as if it had ended by itself)."""
    from prefect.client.orchestration import get_client

    from soupline import interrupt

    log = tmp_path / "serve.log"
    _serve_then_ctrl_c(repo, env, log, "ctrl-c", until="is being served")  # printed just before the runner starts
    assert interrupt.MESSAGE.strip() in _tail(log) and "Traceback" not in log.read_text(errors="replace")
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("soupline-pipeline/ctrl-c").paused


def test_ctrl_c_during_a_served_run_stops_it_without_a_traceback(repo, server, env, tmp_path):
    """Ctrl-C while a served run trains: the run stops (Crashed, its checkpoint kept) and the command ends with the
    one line and 130. soupline's own SIGINT handler (to tell Ctrl-C from SIGTERM) kept asyncio from cancelling the
    runner's task, so the interrupt landed inside the event loop and printed 35 lines of asyncio traceback."""
    from prefect.client.orchestration import get_client

    from soupline import interrupt

    log = tmp_path / "serve.log"
    run = _serve_then_ctrl_c(repo, env, log, "ctrl-c-run", "--no-schedule", "train.epochs=400",
                             until="train lr", trigger=True)  # the first ingredient's progress bar
    text = log.read_text(errors="replace")
    assert interrupt.MESSAGE.strip() in text[-3000:]
    assert "Traceback" not in text and "Exception in callback" not in text, text[-6000:]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.type.value == "CRASHED"


@pytest.mark.slow  # about 40 s: serve, a triggered run, a hang-up
def test_a_hang_up_during_a_served_run_stops_it_as_ctrl_c_does(repo, server, env, tmp_path):
    """SIGHUP on `soupline serve` (its ssh session closed; a hang-up may reach it alone, `kill -HUP`): as Ctrl-C, its
    run in progress stops (`Crashed`, checkpoint kept), the schedule is paused, one line, exit code 129. Before, the
    hang-up killed it where it stood: the schedule left on, and the run went on training with no runner."""
    from prefect.client.orchestration import get_client

    from soupline import interrupt

    log = tmp_path / "serve.log"
    run = _serve_then_ctrl_c(repo, env, log, "hang-up", "--no-schedule", "train.epochs=400", until="train lr",
                             trigger=True, hang_up=True)
    text = log.read_text(errors="replace")
    assert interrupt.MESSAGE.strip() in text[-3000:] and "Traceback" not in text, text[-6000:]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.type.value == "CRASHED"
        assert client.read_deployment_by_name("soupline-pipeline/hang-up").paused


@pytest.mark.slow  # about 35 s each: serve, then the signal
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=lambda signum: signum.name)
def test_serve_started_with_ctrl_c_ignored_stops_on_a_hang_up_or_sigterm(repo, server, env, tmp_path, signum):
    """`soupline serve` started with SIGINT ignored (`cmd &` in a script, `trap '' INT`): asyncio then installs no
    Ctrl-C handler, and serve passed a hang-up on as a Ctrl-C to that handler only, so it left SIGHUP's default action:
    a hang-up killed it where it stood, its schedule left on. Now a hang-up stops it as Ctrl-C does (one line, exit code
    129, the schedule paused); SIGTERM stops it as ever (Prefect's runner: exit code 0, paused)."""
    from prefect.client.orchestration import get_client

    from soupline import interrupt

    name, log = f"ignored-int-{signum.name.lower()}", tmp_path / "serve.log"
    proc = _start([sys.executable, "-m", "soupline.cli", "serve", "--name", name], repo, {**env, "PWD": str(repo)},
                  log, ctrl_c_ignored=True)
    try:
        _wait_for(log, "is being served", proc)
        time.sleep(2)  # the runner started
        proc.send_signal(signum)
        assert proc.wait(60) == (128 + signal.SIGHUP if signum == signal.SIGHUP else 0), _tail(log)
    finally:
        _stop(proc)
    text = log.read_text(errors="replace")
    assert (interrupt.MESSAGE.strip() in text[-3000:]) == (signum == signal.SIGHUP) and "Traceback" not in text, text
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name(f"soupline-pipeline/{name}").paused


def _wait_for(log: Path, text: str, proc: subprocess.Popen, after: int = 0) -> None:
    """Until `text` is in `log` past its first `after` characters (the serving process still up)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while text not in log.read_text(errors="replace")[after:]:
        assert proc.poll() is None and time.monotonic() < deadline, _tail(log)
        time.sleep(0.5)


def _deployment_run(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`prefect deployment run NAME ARGS...`, as from another terminal with `env`."""
    return subprocess.run([str(BIN / "prefect"), "deployment", "run", name, *args], env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)


def test_a_second_serve_of_a_served_deployment_is_one_line(cold_run, repo, env):
    """Two `soupline serve` of one deployment both started its runs: two at once in one workspace, the second failing
    on its lock (from another project, each ran the runs of the project registered last). The second is refused."""
    out = subprocess.run([sys.executable, "-m", "soupline.cli", "serve"], cwd=repo, env={**env, "PWD": str(repo)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"error: soupline-pipeline/served is served already, on {repo.resolve()} (polled for "
                           "runs "), line
    assert line.endswith("stop that `soupline serve` first (gone? try again in a minute), or give this one another "
                         "--name"), line


@pytest.mark.slow  # about 55 s: a run in progress waits out the 30 s grace
def test_sigterm_after_the_server_died_stops_the_run_and_exits(repo, env, tmp_path):
    """The Prefect server dies under `soupline serve` while a run trains, then serve is stopped (SIGTERM, a service
    manager's stop): Prefect's shutdown asked the server about the run for 78 s, then left it training, and the
    command hung for minutes in tracebacks. Now the run's process is stopped as Prefect's runner stops it (SIGTERM,
    SIGKILL 30 s later: it cannot record its end) and serve exits 0, saying so."""
    home = tmp_path / "home"
    home.mkdir()
    own = {**env, "PREFECT_HOME": str(home)}
    server, own["PREFECT_API_URL"] = _start_server(own, tmp_path / "server.log")
    log = tmp_path / "serve.log"
    proc = _start([sys.executable, "-m", "soupline.cli", "serve", "--name", "orphaned", "--no-schedule",
                   "train.epochs=400"], repo, {**own, "PWD": str(repo)}, log)
    try:
        _wait_for(log, "is being served", proc)
        assert _deployment_run("soupline-pipeline/orphaned", own).returncode == 0
        _wait_for(log, "train lr", proc)  # the first ingredient's progress bar
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, _tail(log)
        print(f"SIGTERM to exit with the server gone: {time.monotonic() - start:.1f} s")
        text = _tail(log)
        assert "warning: the Prefect server does not answer: 1 run(s) in progress stopped (checkpoints kept)" in text
        assert "soupline-pipeline/orphaned is not paused (its schedule stays on)" in text
    finally:
        _stop(proc)
        _stop(server)


@pytest.mark.slow  # about 55 s: serve, a watched run and a Ctrl-C on a temporary server
def test_serve_on_a_temporary_server_names_it_for_other_terminals(repo, env, tmp_path):
    """Without PREFECT_API_URL, `soupline serve` gives the URL of its temporary server. `prefect deployment run --watch`
    from another terminal (told nothing) started a server of its own, and each run's process a third (8 s a run):
    the watch never heard of the run's end and waited for good. Ctrl-C during a run stopped the server with it, and
    the command hung for minutes in tracebacks; now the run ends Crashed, in one line and exit code 130."""
    from soupline import interrupt

    own = {**env, "PREFECT_HOME": str(tmp_path)}  # its own database
    own.pop("PREFECT_API_URL", None)
    log = tmp_path / "serve.log"
    proc = _start([sys.executable, "-m", "soupline.cli", "serve", "--name", "temporary", "--no-schedule"], repo,
                  {**own, "PWD": str(repo)}, log, ctrl_c=True)
    try:
        _wait_for(log, "is being served", proc)
        found = re.search(r"`PREFECT_API_URL=(\S+) prefect deployment run 'soupline-pipeline/temporary'`", _tail(log))
        assert found, _tail(log)
        other = {**own, "PREFECT_API_URL": found[1]}
        watch = _deployment_run("soupline-pipeline/temporary", other, "--watch")
        assert "Flow run finished successfully in 'Completed'" in watch.stdout, watch.stdout[-3000:]
        assert log.read_text(errors="replace").count("Starting temporary server") == 1  # runs use serve's server
        after = len(log.read_text(errors="replace"))
        assert _deployment_run("soupline-pipeline/temporary", other, "-p", 'overrides=["train.epochs=400"]'
                               ).returncode == 0
        _wait_for(log, "train lr", proc, after)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130, _tail(log)
    finally:
        _stop(proc)
    text = log.read_text(errors="replace")[after:]
    assert "Finished in state Crashed" in text and interrupt.MESSAGE.strip() in text
    assert "Traceback" not in text, text[-6000:]


def test_serve_with_a_server_that_does_not_answer_is_one_line(repo, env):
    url = f"http://127.0.0.1:{_free_port()}/api"  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "soupline.cli", "serve"], cwd=repo,
                         env={**env, "PREFECT_API_URL": url}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: the Prefect server at PREFECT_API_URL={url} does not answer (ConnectError: [Errno 111] "
        "Connection refused); start it with `prefect server start`, or unset PREFECT_API_URL"], out.stderr


def test_serve_bad_override_is_one_line_before_prefect(repo, env):
    out = subprocess.run([sys.executable, "-m", "soupline.cli", "serve", "select.budget=-1"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: params: select.budget: budget must be > 0 (a fraction in (0, 1] or a count) (got -1)"]


def test_serve_without_prefect_is_one_line(monkeypatch, capsys):
    """`soupline serve` where the `prefect` extra is not installed: one line saying how to install it (was: a
    ModuleNotFoundError traceback from its first Prefect import, the --cron check)."""
    from soupline import cli

    monkeypatch.setitem(sys.modules, "prefect", None)  # what `import prefect` then finds: none installed
    monkeypatch.chdir(ROOT)  # serve chdirs into the project; undone after the test
    for argv in ([], ["--no-schedule"]):
        assert cli.main(["serve", "--root", str(ROOT), *argv]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "error: `soupline serve` runs the Prefect flow, and prefect is not installed: pip install -e '.[prefect]'"]


def test_serve_options_reach_flow_serve(monkeypatch, capsys):
    """--name, --cron, --no-schedule and overrides, as `serve_until_stopped` receives them (not started here)."""
    from soupline import cli

    calls = []
    monkeypatch.setattr("flows.serving.serve_until_stopped", lambda flow, **kw: calls.append((flow.name, kw)) or True)
    monkeypatch.setattr("flows.workspace.prefect_server_answers", lambda: "http://127.0.0.1:1/api")
    monkeypatch.setattr("flows.interruptible.temporary_server", contextlib.nullcontext)  # as if it were configured
    monkeypatch.chdir(ROOT)  # serve chdirs into the project; undone after the test
    assert cli.main(["serve", "--root", str(ROOT), "--name", "adhoc", "--no-schedule", "select.budget=0.2"]) == 0
    assert cli.main(["serve", "--root", str(ROOT), "--cron", "30 4 * * 1"]) == 0
    assert cli.main(["serve", "--root", str(ROOT), "--cron", "not a cron"]) == 2  # before anything starts
    assert "--cron 'not a cron' is not a cron schedule" in capsys.readouterr().err
    assert cli.main(["serve", "--root", str(ROOT), "--no-schedule", "--cron", "0 1 * * *"]) == 2  # was: cron ignored
    assert "--cron '0 1 * * *' and --no-schedule: a deployment is scheduled or not" in capsys.readouterr().err
    for bad in ("a/b", " "):
        assert cli.main(["serve", "--root", str(ROOT), "--name", bad]) == 2
        assert "a deployment name must be non-empty, without '/' or '%'" in capsys.readouterr().err
    (flow, first), (_, second) = calls
    assert flow == "soupline-pipeline" and first["name"] == "adhoc" and first["cron"] is None
    assert first["parameters"] == {"root": str(ROOT), "params_path": "params.yaml", "overrides": ["select.budget=0.2"]}
    assert second["name"] == "served" and second["cron"] == "30 4 * * 1"
    assert first["limit"] == second["limit"] == 1  # runs share the workspace: one at a time
    assert first["temporary"] is None  # a configured server: its URL is the user's to give
