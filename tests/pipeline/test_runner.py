"""Run folders: resume, kill + resume, scheduler independence, refusal to overwrite, provenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perovstem.errors import OutputExistsError, PerovstemError
from perovstem.io import read_table, save_image
from perovstem.pipeline import load_config, run_pipeline

HERE = Path(__file__).resolve().parent

CONFIG = """
[run]
name = "{name}"
seed = {seed}
plugins = ["_steps_for_tests"]

[[step]]
run = "test.make_series"
id = "gen"
n_frames = {n_frames}

[[step]]
run = "series.frame_stats"
id = "stats"
plot = false

[[step]]
run = "test.noisy_sum"
id = "noisy"
delay_s = {delay}

[[step]]
run = "series.frames"
id = "frames"
"""


def _config(tmp_path: Path, *, name="r", seed=1, n_frames=12, delay=0.0, fname="a.toml") -> Path:
    p = tmp_path / fname
    p.write_text(CONFIG.format(name=name, seed=seed, n_frames=n_frames, delay=delay))
    return p


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {p.name: read_table(p) for p in sorted((run_dir / "tables").glob("*.parquet"))}


def _assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert sorted(ta) == sorted(tb) and ta
    for k in ta:
        pd.testing.assert_frame_equal(ta[k], tb[k], check_exact=True)
        assert ta[k].attrs == tb[k].attrs
        assert (a / "tables" / k).read_bytes() == (b / "tables" / k).read_bytes(), k


def test_rerun_skips_finished_steps_and_recomputes_changed(tmp_path):
    cfg = _config(tmp_path)
    out = tmp_path / "run"
    r1 = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    assert [s.status for s in r1.steps] == ["ran"] * 4
    assert (out / "report.html").is_file() and (out / "provenance.json").is_file()
    before = _tables(out)
    r2 = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    assert [s.status for s in r2.steps] == ["cached"] * 4
    # a changed parameter re-runs that step and its dependants only
    cfg.write_text(cfg.read_text().replace("delay_s = 0.0", "delay_s = 0.001"))
    r3 = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    assert [s.status for s in r3.steps] == ["cached", "cached", "ran", "cached"]
    # a changed seed changes the data, so everything downstream re-runs
    cfg.write_text(cfg.read_text().replace("seed = 1", "seed = 2"))
    r4 = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    assert [s.status for s in r4.steps] == ["ran"] * 4
    after = _tables(out)
    assert not after["stats.stats.parquet"].equals(before["stats.stats.parquet"])


def test_run_outputs_get_the_umask_permissions(tmp_path):
    """The atomic writer's mkstemp left every report, table, plot and provenance file 0600:
    a run folder on a shared disk was unreadable to the group whatever the umask."""
    old = os.umask(0o022)
    try:
        run_pipeline(_config(tmp_path), out=tmp_path / "run", quiet=True, scheduler="serial")
        os.umask(0o027)
        run_pipeline(_config(tmp_path, name="r2"), out=tmp_path / "run2", quiet=True)
    finally:
        os.umask(old)
    files = ["report.html", "provenance.json", "config.toml", "tables/stats.stats.parquet"]
    for f in files:
        assert (tmp_path / "run" / f).stat().st_mode & 0o777 == 0o644, f
        assert (tmp_path / "run2" / f).stat().st_mode & 0o777 == 0o640, f


def test_file_input_checksum_controls_resume(tmp_path):
    from perovstem import Series

    s = Series(np.arange(2 * 8 * 8, dtype=float).reshape(2, 8, 8), 0.5, dose_e_per_A2=5.0)
    save_image(s, tmp_path / "s.npz")
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        '[inputs]\nseries = "s.npz"\n[[step]]\nrun = "series.frame_stats"\nplot = false\n'
    )
    out = tmp_path / "run"
    assert run_pipeline(cfg, out=out, quiet=True).steps[0].status == "ran"
    assert run_pipeline(cfg, out=out, quiet=True).steps[0].status == "cached"
    prov = json.loads((out / "provenance.json").read_text())
    import hashlib

    digest = hashlib.sha256((tmp_path / "s.npz").read_bytes()).hexdigest()
    assert prov["inputs"]["series"]["sha256"] == digest
    save_image(s.replace(data=s.data + 1.0), tmp_path / "s2.npz")  # io refuses to write inputs
    os.replace(tmp_path / "s2.npz", tmp_path / "s.npz")
    r = run_pipeline(cfg, out=out, quiet=True)
    assert r.steps[0].status == "ran"
    np.testing.assert_allclose(
        _tables(out)["frame_stats.stats.parquet"]["mean"], s.data.mean(axis=(1, 2)) + 1.0
    )


def test_output_folder_of_another_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    run_pipeline(_config(tmp_path, name="first"), out=out, quiet=True, scheduler="serial")
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = _config(tmp_path, name="second", fname="b.toml")
    with pytest.raises(OutputExistsError, match="holds another run"):
        run_pipeline(other, out=out, quiet=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no perovstem run"):
        run_pipeline(other, out=foreign, quiet=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    from perovstem.cli.main import main

    assert main(["run", str(other), "--out", str(out), "--quiet"]) == 2


def test_provenance_records_versions_params_and_steps(tmp_path):
    out = tmp_path / "run"
    run_pipeline(_config(tmp_path, seed=7), out=out, quiet=True, scheduler="serial")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 7 and prov["run"] == "r"
    for pkg in ("python", "perovstem", "numpy", "pandas", "dask"):
        assert pkg in prov["versions"]
    assert prov["machine"]["cpu_count"] == os.cpu_count()
    steps = {s["id"]: s for s in prov["steps"]}
    assert steps["gen"]["params"] == {"n_frames": 12, "size": 24}
    assert all(len(s["key"]) == 64 for s in prov["steps"])
    t = read_table(out / "tables" / "noisy.table.parquet")
    assert t.attrs["perovstem_step"] == "test.noisy_sum"
    assert json.loads(t.attrs["perovstem_params"]) == {"delay_s": 0.0}


def test_failing_step_stops_or_is_reported(tmp_path):
    cfg = _config(tmp_path)
    text = cfg.read_text().replace(
        'id = "frames"', 'id = "frames"\ninputs = { series = "noisy.table" }'
    )
    cfg.write_text(text)  # a DataFrame where a Series is expected: the step fails
    # (an AttributeError from deep inside before input kinds were checked)
    with pytest.raises(PerovstemError, match=r"step `frames` \(series.frames\): input `series`"):
        run_pipeline(cfg, out=tmp_path / "r1", quiet=True, scheduler="serial")
    prov = json.loads((tmp_path / "r1" / "provenance.json").read_text())
    assert prov["steps"][-1]["status"] == "failed"
    cfg.write_text(
        text.replace(
            'plugins = ["_steps_for_tests"]',
            'plugins = ["_steps_for_tests"]\non_error = "continue"',
        )
    )
    r = run_pipeline(cfg, out=tmp_path / "r2", quiet=True, scheduler="serial")
    assert [s.status for s in r.steps] == ["ran", "ran", "ran", "failed"]
    assert "input `series` is wired to `noisy.table`, a table" in r.steps[-1].message
    assert "failed" in (tmp_path / "r2" / "report.html").read_text()


def test_kill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    """A run killed (SIGKILL) while a step is running resumes; tables equal a clean run."""
    cfg = _config(tmp_path, n_frames=30, delay=0.1)  # the `noisy` step takes ~3 s
    ref = run_pipeline(cfg, out=tmp_path / "ref", quiet=True, scheduler="serial")
    assert [s.status for s in ref.steps] == ["ran"] * 4
    out = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "perovstem.cli.main",
            "run",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
            "--scheduler",
            "serial",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    marker = out / ".cache" / "stats" / "done.json"
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() - t0 < 60, "the run did not reach the second step"
        time.sleep(0.05)
    time.sleep(0.5)  # now inside the slow `noisy` step
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / ".cache" / "noisy" / "done.json").exists()
    assert not (out / "report.html").exists()
    resumed = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    status = {s.id: s.status for s in resumed.steps}
    assert status == {"gen": "cached", "stats": "cached", "noisy": "ran", "frames": "ran"}
    _assert_same_tables(out, tmp_path / "ref")
    for p in (tmp_path / "ref" / "tables").glob("*.parquet"):  # byte for byte, too
        assert (out / "tables" / p.name).read_bytes() == p.read_bytes(), p.name


def test_local_cluster_equals_serial(tmp_path):
    """Per-frame work on a 2-worker LocalCluster gives exactly the serial results."""
    cfg = load_config(_config(tmp_path, n_frames=24))
    serial = run_pipeline(cfg, out=tmp_path / "serial", quiet=True, scheduler="serial")
    assert serial.scheduler == "serial"
    dist = run_pipeline(
        cfg, out=tmp_path / "dask", quiet=True, scheduler="local:2", processes=False
    )
    assert dist.scheduler.startswith("dask local: 2 workers")
    _assert_same_tables(tmp_path / "serial", tmp_path / "dask")
    prov = json.loads((tmp_path / "dask" / "provenance.json").read_text())
    assert prov["scheduler"].startswith("dask")


def test_existing_client_is_used_and_left_open(tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = load_config(_config(tmp_path, n_frames=6))
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        r = run_pipeline(cfg, out=tmp_path / "c", quiet=True, scheduler=client)
        assert r.scheduler.startswith("dask client")
        assert client.status == "running"
    run_pipeline(cfg, out=tmp_path / "s", quiet=True, scheduler="serial")
    _assert_same_tables(tmp_path / "c", tmp_path / "s")


def test_bad_scheduler_rejected_before_work(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(PerovstemError, match="`scheduler`"):
        run_pipeline(cfg, out=tmp_path / "x", quiet=True, scheduler="cluster!")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_local_cluster_worker_processes_equal_serial(tmp_path):
    """Worker *processes* (pickling, scattered series, per-frame seeds) give the serial tables."""
    from perovstem import Series

    rng = np.random.default_rng(3)
    s = Series(rng.poisson(20.0, (16, 12, 12)).astype(float), 0.5, dose_e_per_A2=2.0)
    save_image(s, tmp_path / "s.npz")
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        '[inputs]\nseries = "s.npz"\n[[step]]\nrun = "series.frame_stats"\nplot = false\n'
    )
    serial = run_pipeline(cfg, out=tmp_path / "serial", quiet=True, scheduler="serial")
    procs = run_pipeline(cfg, out=tmp_path / "procs", quiet=True, scheduler="local:2")
    assert procs.scheduler.startswith("dask local: 2 workers")
    _assert_same_tables(tmp_path / "serial", tmp_path / "procs")
    np.testing.assert_allclose(
        _tables(tmp_path / "serial")["frame_stats.stats.parquet"]["mean"], s.data.mean(axis=(1, 2))
    )
    assert serial.scheduler == "serial"


@pytest.mark.slow
def test_local_cluster_workers_run_without_dask_malloc_trim(monkeypatch):
    """The pipeline's LocalCluster workers run with glibc's default allocator: dask sets
    ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers' environment (and leaves it in this
    process's), which turns off the adaptive mmap threshold; per-frame cluster detection
    then took 1.4x the CPU time per frame (executor.local_cluster).  Dask's other
    worker settings (one BLAS/OpenMP thread) are kept."""
    pytest.importorskip("distributed")
    from perovstem.pipeline.executor import Executor

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier cluster leaves it
    with Executor("local:1") as ex:
        got = ex.map(os.getenv, ["MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS"])
        assert ex.used_cluster
    assert got == [None, "1"]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's left as it was


def test_progress_messages_and_quiet(tmp_path, capfd):
    from perovstem.cli.main import main

    cfg = _config(tmp_path)
    assert main(["run", str(cfg), "--out", str(tmp_path / "a"), "--scheduler", "serial"]) == 0
    out = capfd.readouterr()
    assert "gen" in out.err and "ran" in out.err  # per-step log on stderr
    assert f"report: {tmp_path / 'a' / 'report.html'}" in out.out
    assert main(["run", str(cfg), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""
    assert main(["run", str(cfg), "--out", str(tmp_path / "a"), "--scheduler", "serial"]) == 0
    assert "cached" in capfd.readouterr().err


def test_scheduler_address_connects_to_existing_cluster(tmp_path):
    """`--scheduler <address>` connects to a running cluster and closes only its own client."""
    distributed = pytest.importorskip("distributed")
    cfg = load_config(_config(tmp_path, n_frames=6))
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        r = run_pipeline(cfg, out=tmp_path / "a", quiet=True, scheduler=cluster.scheduler_address)
        assert r.scheduler.startswith("dask address: 1 workers")
        assert cluster.status.name == "running"
    run_pipeline(cfg, out=tmp_path / "s", quiet=True, scheduler="serial")
    _assert_same_tables(tmp_path / "a", tmp_path / "s")


def test_cli_report_rewrites_report(tmp_path, capsys):
    from perovstem.cli.main import main

    out = tmp_path / "run"
    run_pipeline(_config(tmp_path), out=out, quiet=True, scheduler="serial", report=False)
    assert not (out / "report.html").exists()
    assert main(["report", str(out), "--title", "Rerun <1>"]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert "Rerun &lt;1&gt;" in (out / "report.html").read_text()
    assert main(["report", str(tmp_path)]) == 2  # not a run folder


def test_run_folder_lock(tmp_path):
    """A folder in use by a live process is refused; a dead process's lock is taken over."""
    from perovstem.io.runstore import acquire_lock, release_lock

    out = tmp_path / "run"
    cfg = _config(tmp_path)
    run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    assert not (out / ".lock").exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(
            OutputExistsError, match=f"in use by another perovstem process \\(pid {sleeper.pid}\\)"
        ):
            run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    finally:
        sleeper.kill()
        sleeper.wait()
    r = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")  # stale lock taken over
    assert {s.status for s in r.steps} == {"cached"}
    lock = acquire_lock(out)
    assert lock.read_text() == str(os.getpid())
    release_lock(lock)
    assert not lock.exists()


def test_input_metadata_reported_and_escaped(tmp_path):
    from perovstem import Series

    evil = '<script>alert("md")</script>'
    s = Series(
        np.ones((3, 8, 8)),
        0.5,
        dose_e_per_A2=1.0,
        metadata={"operator": evil, "stage": {"x_um": 1.5}},
    )
    save_image(s, tmp_path / "s.npz")
    cfg = tmp_path / "m.toml"
    cfg.write_text('[inputs]\nseries = "s.npz"\n[[step]]\nrun = "series.frames"\n')
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    loaded = prov["inputs"]["series"]["loaded"]
    assert loaded["kind"] == "Series" and loaded["shape"] == [3, 8, 8]
    assert loaded["metadata"].get("operator") == evil
    html = r.report.read_text()
    assert evil not in html and "&lt;script&gt;alert(&#34;md&#34;)&lt;/script&gt;" in html
    # a rerun from the cache (the input not read again) keeps the record of how it was read
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial")
    assert {st.status for st in r.steps} == {"cached"}
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["inputs"]["series"]["loaded"] == loaded


def test_step_warnings_reach_provenance_report_and_resume(tmp_path):
    # warnings qualify a step's numbers: they used to scroll past on stderr only, absent
    # from the run folder a reader opens later
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        '[run]\nname = "w"\nplugins = ["_steps_for_tests"]\n\n'
        '[[step]]\nrun = "test.make_series"\nid = "gen"\nn_frames = 3\n\n'
        '[[step]]\nrun = "test.warns"\nid = "w"\n'
    )
    expected = [
        "UserWarning: pixel size disagrees with the cell by -10 %",
        "RuntimeWarning: detector gain unknown <assumed 1>",
    ]
    for status in ("ran", "cached"):
        if status == "ran":
            with pytest.warns(UserWarning, match="disagrees with the cell"):  # still shown
                res = run_pipeline(cfg, quiet=True)
        else:
            res = run_pipeline(cfg, quiet=True)
        step = next(s for s in res.steps if s.id == "w")
        assert step.status == status
        assert step.warnings == expected  # distinct texts, in order
        prov = json.loads((res.run_dir / "provenance.json").read_text())
        assert next(s for s in prov["steps"] if s["id"] == "w")["warnings"] == expected
        html = res.report.read_text()
        assert '<span class="warn">UserWarning: pixel size disagrees' in html
        assert "gain unknown &lt;assumed 1&gt;" in html  # escaped
    gen = next(s for s in res.steps if s.id == "gen")
    assert gen.warnings == []


def _one_image_input(tmp_path, pixel_size_A: float | None, options: str):
    from perovstem import Series

    tmp_path.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.poisson(50.0, size=(5, 16, 16)).astype(np.float32)
    if pixel_size_A is None:
        import tifffile

        tifffile.imwrite(tmp_path / "s.tif", data)
        name = "s.tif"
    else:
        save_image(Series(data, pixel_size_A, dose_e_per_A2=10.0), tmp_path / "s.npz")
        name = "s.npz"
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[run]\non_error = "continue"\n'
        f'[inputs]\nseries = {{ path = "{name}"{options} }}\n[[step]]\nrun = "series.frames"\n'
    )
    return run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)


def test_pixel_size_in_nm_overriding_the_file_is_flagged(tmp_path):
    """`pixel_size = 0.0125` (nm written for Å) used to replace the file's 0.125 Å silently;
    every length and dose per Å² downstream was then off by 10 or 100."""
    r = _one_image_input(tmp_path, 0.125, ", pixel_size = 0.0125")
    assert r.steps[0].status == "ran"
    w = " ".join(r.steps[0].warnings)
    assert "0.0125" in w and "0.125" in w and "nm" in w, r.steps[0].warnings
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["inputs"]["series"]["loaded"]["warnings"]
    from perovstem.report import write_report

    html = write_report(tmp_path / "run").read_text()  # shown with the input as read
    assert '<th>warning</th><td><span class="warn">UserWarning: [inputs] series' in html
    # the same value as the file: nothing to say
    r2 = _one_image_input(tmp_path / "same", 0.125, ", pixel_size = 0.125")
    assert not r2.steps[0].warnings


def test_missing_calibration_says_how_to_give_it_in_the_toml(tmp_path):
    r = _one_image_input(tmp_path, None, "")
    assert r.steps[0].status == "failed"
    msg = r.steps[0].message
    assert "CalibrationError" in msg and "[inputs] series" in msg and "pixel_size = <Å>" in msg


def test_rerun_in_the_same_folder_leaves_no_stale_public_files(tmp_path):
    """A step removed from the configuration (or failing after its input changed) used to
    leave the earlier run's table in tables/, not in provenance.json; re-adding the step
    must bring its files back (a cached step whose public files are gone runs again)."""
    body = (
        '[run]\nname = "same"\nplugins = ["_steps_for_tests"]\n'
        '[[step]]\nrun = "test.make_series"\nid = "gen"\nn_frames = 3\nsize = 8\n'
        '[[step]]\nrun = "series.frames"\n'
    )
    stats = '[[step]]\nrun = "series.frame_stats"\nid = "stats"\n'
    cfg = tmp_path / "a.toml"
    cfg.write_text(body + stats)
    run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    table = tmp_path / "run" / "tables" / "stats.stats.parquet"
    plot = tmp_path / "run" / "plots" / "stats.mean_intensity.png"
    assert table.is_file() and plot.is_file()
    cfg.write_text(body)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    assert [s.status for s in r.steps] == ["cached", "cached"]
    assert not table.exists() and not plot.exists()
    assert (tmp_path / "run" / "tables" / "frames.frames.parquet").is_file()
    cfg.write_text(body + stats)
    r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    assert [s.status for s in r.steps] == ["cached", "cached", "ran"]
    assert table.is_file() and plot.is_file()


def test_input_read_as_the_wrong_kind_is_named_and_kind_option_fixes_it(tmp_path, capsys):
    """A stack wired to a step that wants another kind: the failure names the [inputs]
    entry and what it was read as, also on the console ("[inputs]" used to be eaten as
    console markup); the `kind` option of io.load is accepted in [inputs] (it was refused)."""
    from perovstem import Series

    data = np.random.default_rng(0).poisson(50.0, size=(3, 16, 16)).astype(np.float32)
    save_image(Series(data, 0.5, dose_e_per_A2=10.0), tmp_path / "s.npz")
    cfg = tmp_path / "a.toml"
    body = '[run]\non_error = "continue"\n[inputs]\nimg = SPEC\n[[step]]\nrun = "series.frames"\n'
    body += 'inputs = { series = "img" }\n'
    # kind = "image" wired to a series input is refused before anything runs (a file read
    # with kind="image" is an Image); wired to an image input, the option reaches load
    cfg.write_text(body.replace("SPEC", '{ path = "s.npz", kind = "image" }'))
    with pytest.raises(PerovstemError, match=r"\[inputs\] img \(s.npz\), a file read as an Image"):
        load_config(cfg)
    cfg.write_text(
        body.replace("SPEC", '{ path = "s.npz", kind = "image" }')
        .replace('"series.frames"', '"atoms.fit"')
        .replace("{ series = ", "{ image = ")
    )
    r = run_pipeline(cfg, out=tmp_path / "r0", scheduler="serial", report=False)
    assert "kind='image' but the file holds 3 frames" in r.steps[0].message  # option reached load
    bad = tmp_path / "b.toml"
    bad.write_text(body.replace("SPEC", '{ path = "s.npz", kind = "stack" }'))
    with pytest.raises(PerovstemError, match="option `kind` must be"):
        load_config(bad)
    from perovstem import Image

    save_image(Image(data[0], 0.5), tmp_path / "i.npz")
    cfg.write_text(body.replace("SPEC", '"i.npz"'))
    r = run_pipeline(cfg, out=tmp_path / "r1", scheduler="serial", report=False)
    msg = r.steps[0].message
    assert r.steps[0].status == "failed"
    assert "input `series` is [inputs] img = 'i.npz', read as a Image (16×16)" in msg, msg
    assert "[inputs] img" in " ".join(capsys.readouterr().err.split())


def test_per_frame_warnings_with_other_numbers_are_folded(tmp_path):
    """One warning per frame of a 30-frame series, each with that frame's number: the step
    used to list 20 near-copies and hide the other warning behind '... and 11 more'."""
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        '[run]\nplugins = ["_steps_for_tests"]\n'
        '[[step]]\nrun = "test.make_series"\nn_frames = 30\nsize = 4\n'
        '[[step]]\nrun = "test.warns_per_frame"\nid = "w"\n'
    )
    with pytest.warns(UserWarning):
        r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler="serial", report=False)
    w = next(s for s in r.steps if s.id == "w").warnings
    assert w == [
        "UserWarning: gain unknown; measured 0.0600 counts/e⁻ "
        "[and 29 more like it with other values]",
        "RuntimeWarning: frame 3 of 9 skipped: empty",
    ], w


class _ProcessClient:
    """A stand-in dask Client whose tasks run in another process (as dask workers do)."""

    def __init__(self) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"))

    def submit(self, fn, *args, pure=False, **kw):
        fut = self.pool.submit(fn, *args, **kw)
        fut.release = lambda: None
        return fut

    def gather(self, futs):
        return [f.result() for f in futs]

    def scatter(self, obj, broadcast=True, hash=False):
        return obj

    def scheduler_info(self):
        return {"workers": {"w0": {}}}


def test_warnings_raised_in_worker_processes_reach_the_step(tmp_path):
    """A warning raised inside ctx.map on a dask worker process stayed in the worker's log:
    the report of a cluster run lacked the warnings of the same serial run."""
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        '[run]\nplugins = ["_steps_for_tests"]\n'
        '[[step]]\nrun = "test.make_series"\nn_frames = 4\nsize = 4\n'
        '[[step]]\nrun = "test.map_warns"\nid = "m"\n'
    )
    client = _ProcessClient()
    try:
        with pytest.warns(UserWarning, match="no drift"):
            r = run_pipeline(cfg, out=tmp_path / "run", quiet=True, scheduler=client)
    finally:
        client.pool.shutdown()
    step = next(s for s in r.steps if s.id == "m")
    assert step.warnings == ["UserWarning: frame 2: no drift estimate"], step.warnings
    assert read_table(tmp_path / "run" / "tables" / "m.table.parquet")["sq"].tolist() == [
        0,
        1,
        4,
        9,
    ]


def test_report_tables_show_missing_and_infinite_values_in_words(tmp_path):
    """A mechanism table's rows that were not fitted showed "nan nan nan nan" in the
    report, and a model ranking with too few points "4 inf inf 0"; missing values now show
    as a dash and infinite ones as ∞ (the row's text says why), numbers as before."""
    import numpy as np
    import pandas as pd

    from perovstem.pipeline.context import StepContext

    ctx = StepContext("s", {}, 0, run_dir=tmp_path, section="mechanism", executor=None)
    df = pd.DataFrame(
        {"model": ["a", "b"], "aicc": [np.inf, 12.345678], "weight": [np.nan, 1.0],
         "gas": [None, "O2"], "neg": [-np.inf, 0.5]}
    )  # fmt: skip
    ctx.table("t", df)
    rows = ctx.report_items[-1]["rows"]
    assert rows == [["a", "∞", "—", "—", "−∞"], ["b", "12.35", "1", "O2", "0.5"]]


def test_report_of_an_interrupted_rerun_says_the_folder_is_mixed(tmp_path, capsys, monkeypatch):
    """A rerun with new parameters killed after some steps left their new tables beside the
    earlier run's, and `perovstem report` then showed the earlier run's step log and
    parameters without a word.  The run marker records a run in progress until
    provenance.json is written; a report made meanwhile says so (warning and banner)."""
    import perovstem.pipeline.runner as runner
    from perovstem.report import write_report

    out = tmp_path / "run"
    run_pipeline(_config(tmp_path, n_frames=30), out=out, quiet=True, scheduler="serial")
    marker = json.loads((out / "perovstem-run.json").read_text())
    assert "in_progress_since_utc" not in marker

    def killed(*args, **kwargs):  # Ctrl-C (or a kill) after the steps, before provenance
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner, "_write_provenance", killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(
                _config(tmp_path, seed=2, n_frames=30), out=out, quiet=True, scheduler="serial"
            )
    assert "in_progress_since_utc" in json.loads((out / "perovstem-run.json").read_text())
    with pytest.warns(UserWarning, match="did not finish"):
        html = write_report(out).read_text()
    assert 'id="incomplete"' in html
    run_pipeline(_config(tmp_path, seed=2, n_frames=30), out=out, quiet=True, scheduler="serial")
    assert 'id="incomplete"' not in (out / "report.html").read_text()
    assert "in_progress_since_utc" not in json.loads((out / "perovstem-run.json").read_text())
    # a rerun without a report says that the report left is the earlier run's
    capsys.readouterr()
    cfg = _config(tmp_path, seed=3, n_frames=30)
    run_pipeline(cfg, out=out, quiet=False, scheduler="serial", report=False)
    assert "report.html is from an earlier run of this folder" in capsys.readouterr().err


def test_unreachable_scheduler_is_refused_before_any_step(tmp_path, monkeypatch):
    """`-s tcp://127.0.0.1:1` ran the serial steps, then waited 30 s at the first mapped
    one and ended in "unexpected OSError" (exit 1); it is now a bad-input error before
    anything runs or any folder is made."""
    import perovstem.pipeline.executor as ex

    monkeypatch.setattr(ex, "_CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "run"
    with pytest.raises(PerovstemError, match="cannot reach the dask scheduler 'tcp://127.0.0.1:1'"):
        run_pipeline(_config(tmp_path), out=out, quiet=True, scheduler="tcp://127.0.0.1:1")
    assert not out.exists()


def test_deleted_cached_value_reruns_its_step(tmp_path):
    """A cached value deleted by hand (or a disk clean-up) failed every later run with
    "artefact ... is missing"; the step that made it now runs again."""
    import shutil

    cfg = _config(tmp_path)
    out = tmp_path / "run"
    run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    gone = [p for p in (out / ".cache" / "gen").iterdir() if p.name.startswith("series")]
    assert gone
    for p in gone:
        p.unlink() if p.is_file() else shutil.rmtree(p)
    res = run_pipeline(cfg, out=out, quiet=True, scheduler="serial")
    assert res.status("gen") == "ran" and res.status("frames") == "cached"


PLUGIN_BESIDE = """
from perovstem.pipeline import Param, register_step


@register_step("beside.percentile", inputs=("series",), outputs=("table",),
               params={{"percentile": Param(float, 99.0, "clip level, %", min=0, max=100)}})
def percentile(ctx, series):
    import numpy as np
    import pandas as pd

    {body}
    rows = ctx.map(f, range(series.n_frames), description="frames")
    return {{"table": pd.DataFrame(rows)}}
"""


@pytest.mark.parametrize("holds_ctx", [False, True])
def test_plugin_beside_the_config_and_a_mapped_function_holding_ctx(tmp_path, holds_ctx):
    """The README's plugin example (mylab_steps.py beside the TOML) failed with "No module
    named 'mylab_steps'" without PYTHONPATH; and its lambda, which read ctx.params, could
    not be sent to dask workers ("unexpected TypeError: Could not serialize ...").  The
    plugin is found beside the file (also by the workers), and such a function is refused
    saying what to do."""
    name = f"beside_steps_{int(holds_ctx)}"
    body = (
        'f = lambda k: {"p": float(np.percentile(series.data[k], ctx.params["percentile"]))}'
        if holds_ctx
        else 'q = ctx.params["percentile"]\n'
        '    f = lambda k: {"p": float(np.percentile(series.data[k], q))}'
    )
    (tmp_path / f"{name}.py").write_text(
        PLUGIN_BESIDE.format(body=body).replace("beside.percentile", f"{name}.p")
    )
    from perovstem import Series

    save_image(Series(np.ones((4, 8, 8)), 0.5), tmp_path / "s.npz")
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        f'[run]\nreport = false\nplugins = ["{name}"]\n[inputs]\nseries = "s.npz"\n'
        f'[[step]]\nrun = "{name}.p"\nid = "p"\n'
    )
    run = {"out": tmp_path / "run", "quiet": True, "scheduler": "local:1"}
    if holds_ctx:
        with pytest.raises(PerovstemError, match="must not hold `ctx`"):
            run_pipeline(cfg, **run)
    else:
        assert run_pipeline(cfg, **run).status("p") == "ran"


PLUGIN_SCALE = """
import pandas as pd
from perovstem.pipeline import register_step


@register_step("{name}.scale", inputs=("series",), outputs=("table",))
def scale(ctx, series):
    return {{"table": pd.DataFrame({{"v": [float(series.data.mean()) * {factor}]}})}}
"""


def test_edited_plugin_runs_again(tmp_path, monkeypatch):
    """A plugin step's result stayed cached after its code was edited (its key held only the
    step's name, version and parameters), and in one session the old module kept running.
    The key holds the plugin module's source digest, and an edited module is re-imported."""
    from perovstem import Series

    # with bytecode written, an edit of the same size within one second reads the stale .pyc
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    name = "edited_plugin_steps"
    plugin = tmp_path / f"{name}.py"
    plugin.write_text(PLUGIN_SCALE.format(name=name, factor=2.0))
    save_image(Series(np.ones((2, 8, 8)), 0.5), tmp_path / "s.npz")
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        f'[run]\nreport = false\nplugins = ["{name}"]\n[inputs]\nseries = "s.npz"\n'
        f'[[step]]\nrun = "{name}.scale"\nid = "p"\n'
    )
    out = tmp_path / "run"
    table = out / "tables" / "p.table.parquet"
    assert run_pipeline(cfg, out=out, quiet=True, scheduler="serial").status("p") == "ran"
    assert pd.read_parquet(table)["v"].iloc[0] == pytest.approx(2.0)
    assert run_pipeline(cfg, out=out, quiet=True, scheduler="serial").status("p") == "cached"
    plugin.write_text(PLUGIN_SCALE.format(name=name, factor=3.0))
    assert run_pipeline(cfg, out=out, quiet=True, scheduler="serial").status("p") == "ran"
    assert pd.read_parquet(table)["v"].iloc[0] == pytest.approx(3.0)


def test_input_as_read_shows_the_conditions_first():
    """Audit: the report's "Input … as read" table was cut after 24 metadata entries, mostly
    a simulator's nested kmc_params.*, so beam energy, temperature and gas never showed.
    The conditions come first, and a level's scalars before its nested tables."""
    from perovstem import Series
    from perovstem.pipeline.runner import _describe

    md = {"kmc_params": {f"p{i}": i for i in range(40)}, "voltage_kV": 200.0, "title": "x"}
    s = Series(
        np.ones((3, 8, 8)),
        0.5,
        time_s=[0.0, 1.0, 2.0],
        dose_e_per_A2=[10.0, 10.0, 10.0],
        temperature_K=[272.0, 272.0, 272.0],
        gas="H2O",
        metadata=md,
    )
    info = _describe(s)
    assert info["beam energy"] == "200 kV" and info["temperature"] == "272 K"
    assert info["gas"] == "H2O" and info["cumulative dose"] == "30 e⁻/Å²"
    assert info["time"] == "0 … 2 s"
    assert info["metadata"]["voltage_kV"] == "200.0" and info["metadata"]["title"] == "x"
