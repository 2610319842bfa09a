"""Shared fixtures.

Real faces live in ``../shared/data`` beside the repository (override with NOISYFR_SHARED_DATA).
Outside CI a test that needs them is skipped when the folder is missing; in CI (``CI`` set) it fails.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NOISYFR_SHARED_DATA", REPO.parent / "shared" / "data"))

# Ray starts its workers at nice 15: beside the other xdist worker (nice 0) a Ray test waits on
# starved workers, while the CPU it leaves goes to whoever is nicer still (the dlib features of
# BackgroundRun, at nice 19). The suite runs Ray's workers at nice 0, as the jobs Ray's job
# manager starts run; the sweeps' subprocesses inherit it. Users' sweeps keep Ray's default.
os.environ.setdefault("RAY_worker_niceness", "0")

#: Test modules that must not run beside each other under pytest-xdist (``make test`` runs two
#: workers with ``--dist loadgroup``): each group runs on one worker, one test at a time. ray:
#: local Ray clusters (one per machine is what ray.init expects), the sweep driver's signals and
#: its watchdog; distributed: gloo process groups on local ports; timing: wall-clock bounds;
#: validity: its module fixture trains two runs (13 s), made once on one worker, not once on each.
#: tests/test_install.py checks that every module starting Ray or process groups is listed.
XDIST_GROUPS = {
    "ray": ("test_tune_sweep", "test_tune_resume", "test_tune_cluster", "test_tune_reaper",
            "test_parquet_readers", "test_sweep_signals", "test_features_dataset"),
    "distributed": ("test_train_parallel", "test_train_dist"),
    "timing": ("test_config",),
    "validity": ("test_validity",),
}
#: test module -> its group
MODULE_GROUP = {m: g for g, mods in XDIST_GROUPS.items() for m in mods}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = MODULE_GROUP.get(item.path.stem)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
    # the test that reads the background run goes last (of its group: its worker's last test)
    items.sort(key=lambda item: item.name == DLIB_FOLD1.test)


class BackgroundRun:
    """One long command that a test checks, started early in the background instead of when the
    test runs. The dlib features of LFW fold 1 (807 faces, about 100 s of CPU) are the case: the
    test carries the Ray group, runs last on the worker that runs the Ray tests, and the command
    starts with that worker's first Ray test (:func:`pytest_runtest_setup`) at nice 19, so it
    takes the CPU those tests leave while they wait on their clusters and sleeps, instead of
    holding the other worker's core for 80 s. Outside that schedule (the test alone, the Ray
    tests deselected) :meth:`start` runs it when the test asks. Output goes to files (a pipe
    nobody reads would fill and block it); the folder is removed at the end of the session."""

    def __init__(self, test: str):
        self.test, self.proc, self.folder = test, None, None

    @property
    def out(self) -> Path:
        return self.folder / "fold1.parquet"

    def start(self) -> BackgroundRun:
        if self.proc is None:
            self.folder = Path(tempfile.mkdtemp(prefix="noisyfr-background-"))
            with open(self.folder / "stdout", "w") as out, open(self.folder / "stderr", "w") as err:
                self.proc = subprocess.Popen(
                    ["nice", "-n", "19", sys.executable, "-m", "noisyfr", "features",
                     str(SHARED_DATA / "lfw_pairs_fold1"), "--model", "dlib", "--out", str(self.out),
                     "--workers", "2"],
                    stdout=out, stderr=err, cwd=self.folder, env=dict(os.environ, PYTHONPATH=str(REPO)))
        return self

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """The exit status, stdout and stderr of the command (started now if it was not)."""
        code = self.start().proc.wait(timeout)
        return code, (self.folder / "stdout").read_text(), (self.folder / "stderr").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


DLIB_FOLD1 = BackgroundRun("test_dlib_verification_on_lfw_fold1_is_near_the_published_accuracy")


def pytest_runtest_setup(item):
    """The first Ray test of a session that will also check the dlib features of fold 1 starts
    them (:class:`BackgroundRun`), when dlib and the faces are there (else the test says why)."""
    import importlib.util

    marker = item.get_closest_marker("xdist_group")
    if (DLIB_FOLD1.proc is None and marker and marker.args[:1] == ("ray",) and item.name != DLIB_FOLD1.test
            and any(i.name == DLIB_FOLD1.test for i in item.session.items)
            and importlib.util.find_spec("dlib") is not None and (SHARED_DATA / "lfw_pairs_fold1").is_dir()):
        DLIB_FOLD1.start()


def pytest_sessionfinish(session):
    DLIB_FOLD1.stop()


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` every test of a group must carry the group in its id (xdist's
    scheduler sends the tests of one id suffix to one worker): if a pytest or xdist version stops
    doing so, the groups would split silently and, say, two Ray clusters run at once. Fail loudly."""
    config = session.config
    if not os.environ.get("PYTEST_XDIST_WORKER") or not config.getvalue("loadgroup"):
        return
    lost = [item.nodeid for item in session.items
            if item.path.stem in MODULE_GROUP and not item.nodeid.endswith("@" + MODULE_GROUP[item.path.stem])]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup does not group {len(lost)} test(s), e.g. {lost[0]} "
                                "(pytest-xdist and this pytest disagree on node ids: see pyproject.toml)")


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch uses its share of the cores (not all of them)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and int(workers) > 1:
        share = max(1, (os.cpu_count() or 1) // int(workers))
        # and so do the commands the tests start (their torch, numpy's BLAS): a second thread
        # of theirs would spin beside the other worker's tests, not compute
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(share))
        import torch

        torch.set_num_threads(share)


@contextlib.contextmanager
def ray_session(**init) -> Iterator:
    """A local Ray for a test module, started as a sweep starts it: ``ray.init(address="local",
    **noisyfr.tune.run.RAY_INIT, **init)``, quiet and offline (``RAY_ENV``), yielding the ``ray``
    module. It starts through
    noisyfr.tune.reaper.local_ray, so whatever ``ray.shutdown`` leaves (a Ray Train controller
    actor outlived it once) is reaped. ``address="local"``: a fresh instance even while another
    process's ``ray start`` or ray.cluster_utils.Cluster (tests/test_tune_cluster.py) is recorded
    in /tmp/ray/ray_current_cluster, which ray.init() without an address would join. ray.init
    installs its own SIGTERM handler in this process and ray.shutdown leaves it: the test
    process's SIGTERM and SIGINT handlers are put back afterwards (tests/test_run_safety.py checks
    them). Skips when this process already runs a Ray session."""
    import signal

    from noisyfr.tune.run import RAY_INIT, quiet_ray_env

    quiet_ray_env()
    import ray

    from noisyfr.tune.reaper import local_ray

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    kwargs = {"address": "local", **RAY_INIT, **init}
    try:
        with local_ray(lambda: ray.init(**kwargs), None) as started:
            if not started:
                pytest.skip("a Ray session was already running in this process")
            yield ray
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _require(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        msg = f"real face data missing: {path} (see DEVELOPERS.md: ../shared/data beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require("")


@pytest.fixture(scope="session")
def orl_dir() -> Path:
    """ORL: 40 identities x 10 grey PGM images, ImageFolder layout ``s<N>/<k>.pgm``."""
    return _require("orl_faces/images")


@pytest.fixture(scope="session")
def lfw_train_dir() -> Path:
    """LFW training subset: 84 identities x 10 JPEG (250x250, unaligned)."""
    return _require("lfw_train/images")


@pytest.fixture(scope="session")
def lfw_train_all_dir() -> Path:
    """The same 84 LFW identities with all 3,247 of their images (15-530 each)."""
    return _require("lfw_train_all/images")


@pytest.fixture(scope="session")
def lfw_pairs_file() -> Path:
    """LFW View-2 fold 1: 600 pairs; images in ``images/`` beside it."""
    return _require("lfw_pairs_fold1/pairs.txt")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a shared 2-core runner.
    Use per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def orl(orl_dir):
    """The ORL faces opened as an ImageFolder index."""
    from noisyfr.data import open_index

    return open_index(orl_dir)


@pytest.fixture(scope="session")
def lfw(lfw_train_dir):
    """The LFW training subset opened as an ImageFolder index."""
    from noisyfr.data import open_index

    return open_index(lfw_train_dir)


def true_in_forked_child(check: Callable[[], bool]) -> bool:
    """Run ``check()`` in a forked child process and return its verdict (False if it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            ok = False
            try:
                ok = bool(check())
            finally:
                os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    verdict = os.read(r, 1) == b"1"
    os.close(r)
    return verdict


def inject_file(index, out, *, command=None, **noise):
    """``noisyfr.noise.inject_to`` with the spec given as keywords: ``(DataFrame, meta)``."""
    from noisyfr.noise import NoiseSpec, inject_to

    manifest = inject_to(index, NoiseSpec(**noise), out, command=command)
    return manifest.frame, manifest.meta


def exit_status(argv: list[str]) -> int:
    """The exit status of ``noisyfr ARGV``: what ``main`` returns, or the code of the SystemExit
    that argparse raises for a usage error (a flag value refused by its type, e.g. ``--closed nan``)."""
    from noisyfr.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def boundaryface_batch(requires_grad: bool = False):
    """``(head, feats, labels)``: a BoundaryFace head (s=16, correcting from epoch 0) whose three
    centres are the first unit vectors of R^4, and a batch whose first sample, labelled 0, sits at
    class 2's centre (BoundaryFace corrects it to 2), the second at its own centre, the third
    labelled 1 near its own (float64)."""
    import torch

    from noisyfr.losses import MarginHead, build_loss

    d, C = 4, 3
    head = MarginHead(d, C, build_loss("boundaryface", s=16.0, start_epoch=0)).double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(C, d, dtype=torch.float64))
    feats = torch.tensor([[0.05, 0.0, 1.0, 0.0],    # labelled 0, at class 2's centre -> corrected
                          [1.0, 0.1, 0.0, 0.0],     # labelled 0, at its own centre
                          [0.0, 1.0, 0.2, 0.0]], dtype=torch.float64, requires_grad=requires_grad)
    return head, feats, torch.tensor([0, 0, 1])
