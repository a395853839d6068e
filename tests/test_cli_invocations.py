"""Bad invocations of every command: one `error:` line naming the option, exit status 2, and nothing written.

Each row is run in-process in a folder holding a good archive, a damaged one, a foreign SQLite file, an
archive whose run another live process writes, and a folder; afterwards every file there is byte-identical
and no file was added.  Every row must fail while the options are checked: the search is replaced by a trap.
"""
import os
import shutil
import socket
import sqlite3

import pytest
from typer.testing import CliRunner

from archive.store import ArchiveStore, _start_time
from discovery import cli
from discovery.cli import app
from discovery.search import Search, SearchConfig
from evaluators.fitness import FitnessConfig
from grammar.zoo import baseline

ROWS = [
    # discover run: options accepted and then ignored, or failing late
    (["run", "--run", "5"], ["--run", "--resume"]),
    (["run", "--resume", "--task", "walker2d", "--archive", "good.db"], ["--task walker2d", "run #1", "hopper"]),
    (["run", "--resume", "--dataset", "clean", "--archive", "good.db"], ["--dataset clean", "noisy:0.2"]),
    (["run", "--resume", "--seed", "3", "--archive", "good.db"], ["--seed 3", "was started with 0"]),
    (["run", "--resume", "--pairs", "64", "--archive", "good.db"], ["--pairs 64", "was started with the default"]),
    (["run", "--resume", "--llm", "0.5", "--archive", "good.db"], ["--llm 0.5", "0.0"]),
    (["run", "--resume", "--es-strategy", "snes", "--archive", "good.db"], ["--es-strategy snes", "cma"]),
    (["run", "--resume", "--budget-evals", "0", "--budget-minutes", "0", "--archive", "good.db"],
     ["--budget-evals/--budget-minutes", "no limit"]),
    (["run", "--resume", "--run", "7", "--archive", "good.db"], ["unknown run 7"]),
    (["run", "--resume", "--archive", "locked.db"], ["run 1", "being written by process"]),
    (["run", "--resume", "--archive", "no-runs.db"], ["--resume", "holds no run"]),
    (["run", "--resume", "--archive", "missing.db"], ["--resume", "no archive at missing.db"]),
    (["run", "--resume", "--archive", "damaged.db"], ["damaged.db", "not a readable archive"]),
    (["run", "--es-strategy", "bogus"], ["--es-strategy", "'bogus'"]),
    (["run", "--llm", "0.5", "--llm-replay", "999", "--archive", "good.db"], ["--llm-replay 999", "no run 999"]),
    (["run", "--llm", "0.5", "--llm-replay", "1", "--archive", "missing.db"], ["--llm-replay 1", "no archive"]),
    (["run", "--llm", "0.5"], ["--llm 0.5", "OPENAI_API_KEY"]),
    (["run", "--llm", "0.5", "--llm-provider", "anthropic"], ["--llm 0.5", "ANTHROPIC_API_KEY"]),
    (["run", "--budget-evals", "0", "--budget-minutes", "0"], ["--budget-evals/--budget-minutes"]),
    # discover run: one bad value each
    (["run", "--task", "pendulum"], ["--task", "'pendulum'"]),
    (["run", "--task", "hopper", "--task", "humanoid"], ["--task", "'humanoid'"]),
    (["run", "--dataset", "dirty"], ["--dataset", "'dirty'"]),
    (["run", "--dataset", "noisy:0.9"], ["--dataset", "outside"]),
    (["run", "--dataset", "stoch:abc"], ["--dataset", "must be a number"]),
    (["run", "--backend", "cuda"], ["--backend", "'cuda'"]),
    (["run", "--descriptors", "colour"], ["--descriptors", "'colour'"]),
    (["run", "--descriptors", "complexity=0:1"], ["--descriptors", "name=low:high:bins"]),
    (["run", "--baseline", "nope"], ["--baseline", "'nope'"]),
    (["run", "--gp", "0", "--es", "0"], ["--gp/--es/--llm", "0"]),
    (["run", "--llm", "0.3", "--llm-provider", "gemini"], ["--llm-provider", "'gemini'"]),
    (["run", "--llm", "0.3", "--llm-provider", "openai-compatible"], ["--llm-base-url", "needs"]),
    (["run", "--llm", "0.3", "--llm-base-url", "localhost:8000"], ["--llm-base-url", "http"]),
    (["run", "--llm", "0.3", "--llm-timeout", "0"], ["--llm-timeout"]),
    (["run", "--llm-model", "gpt-5"], ["--llm-model", "no effect", "--llm WEIGHT"]),
    (["run", "--llm-base-url", "http://localhost:8000/v1"], ["--llm-base-url", "no effect"]),
    (["run", "--llm-timeout", "5"], ["--llm-timeout", "no effect"]),
    (["run", "--llm-replay", "1", "--archive", "good.db"], ["--llm-replay", "no effect"]),
    (["run", "--es", "0", "--es-strategy", "snes"], ["--es-strategy", "no effect"]),
    (["run", "--archive", "damaged.db"], ["damaged.db", "not a readable archive"]),
    (["run", "--archive", "foreign.db"], ["foreign.db", "not an MPO Discover archive"]),
    (["run", "--archive", "folder"], ["folder", "directory"]),
    (["run", "--archive", "empty.db", "--resume"], ["empty.db", "not an archive"]),
    (["run", "--pairs", "8"], ["--pairs"]),
    (["run", "--segment-length", "1"], ["--segment-length"]),
    (["run", "--seeds", "0"], ["--seeds"]),
    (["run", "--batch", "0"], ["--batch"]),
    (["run", "--top-k", "0"], ["--top-k"]),
    (["run", "--fresh-seeds", "1"], ["--fresh-seeds"]),
    (["run", "--budget-evals", "-1"], ["--budget-evals"]),
    (["run", "--steps", "many"], ["--steps"]),
    (["run", "--llm", "-1"], ["--llm"]),
    (["run", "--bogus"], ["No such option: --bogus"]),
    (["run", "--holdout", "walker2d"], ["--holdout", "TASK:VARIANT"]),
    (["run", "--holdout", "pendulum:clean"], ["--holdout", "'pendulum'"]),
    (["run", "--holdout", "hopper:dirty"], ["--holdout", "'dirty'"]),
    (["run", "--seeds", "4", "--max-seeds", "2"], ["--max-seeds", "at least --seeds (4)"]),
    (["run", "--max-seeds", "0"], ["--max-seeds"]),
    (["run", "--report-baselines", "best"], ["--report-baselines", "'best'"]),
    (["run", "--resume", "--allow-non-monotone", "--archive", "good.db"],
     ["--allow-non-monotone True", "was started with False"]),
    (["run", "--resume", "--holdout", "hopper:clean", "--archive", "good.db"], ["--holdout hopper:clean"]),
    # discover export
    (["export", "dpo", "--format", "onnx"], ["unknown export format 'onnx'"]),
    (["export", "#99", "--archive", "missing.db"], ["no archive at missing.db"]),
    (["export", "#999", "--archive", "good.db"], ["unknown candidate 999"]),
    (["export", "#1", "--archive", "damaged.db"], ["not a readable archive"]),
    (["export", "logp_w +"], ["syntax error", "column 9"]),
    (["export", "__import__('os').system('true')"], ["only plain function names"]),
    (["export", "foo(z)"], ["unknown function 'foo'"]),
    (["export", "dpo", "-o", "folder"], ["--out folder", "folder"]),
    (["export", "dpo", "-o", "nowhere/loss.py"], ["--out nowhere/loss.py", "does not exist"]),
    (["export", "dpo", "--format"], ["--format"]),
    # discover archive
    (["archive", "list", "--archive", "missing.db"], ["no archive at missing.db"]),
    (["archive", "list", "--archive", "damaged.db"], ["damaged.db", "not a readable archive"]),
    (["archive", "list", "--archive", "foreign.db"], ["not an MPO Discover archive"]),
    (["archive", "list", "--archive", "empty.db"], ["empty file"]),
    (["archive", "list", "--archive", "no-runs.db"], ["no runs yet"]),
    (["archive", "list", "--archive", "good.db", "--run", "7"], ["unknown run 7"]),
    (["archive", "list", "--archive", "good.db", "--sort", "name"], ["unknown sort 'name'"]),
    (["archive", "list", "--archive", "good.db", "--status", "weird"], ["unknown status 'weird'"]),
    (["archive", "list", "--archive", "good.db", "--descriptors", "colour"], ["unknown descriptor 'colour'"]),
    (["archive", "show", "999", "--archive", "good.db"], ["unknown candidate 999"]),
    (["archive", "show", "1", "--archive", "good.db", "--run", "7", "--no-plot"], ["unknown run 7"]),
    (["archive", "show", "one", "--archive", "good.db"], ["'candidate_id'", "integer"]),
    (["archive", "map", "--archive", "good.db", "--descriptors", "colour"], ["unknown descriptor 'colour'"]),
    (["archive", "map", "--archive", "folder"], ["folder"]),
    (["archive", "lineage", "5", "--archive", "foreign.db"], ["not an MPO Discover archive"]),
    (["archive", "lineage", "999", "--archive", "good.db"], ["999"]),
    (["archive", "bogus"], ["No such command 'bogus'"]),
    # the other commands
    (["bench", "--task", "pendulum"], ["'pendulum'"]),
    (["bench", "--variant", "dirty"], ["'dirty'"]),
    (["bench", "--objective", "nope"], ["--objective", "nope"]),
    (["datasets", "build", "--task", "humanoid"], ["'humanoid'"]),
    (["datasets", "show", "--variant", "stoch:abc"], ["must be a number"]),
    (["datasets", "reference", "--variant", "noisy:0.9"], ["outside"]),
    (["policies", "show", "--task", "nope"], ["unknown task 'nope'"]),
    (["policies", "train", "--task", "nope"], ["unknown task 'nope'"]),
    (["policies", "train", "--task", "hopper", "--steps", "5"], ["--steps"]),
    (["suite", "check", "--task", "pendulum"], ["'pendulum'"]),
    (["suite", "check", "--variant", "clean+shuffled"], ["--variant clean+shuffled"]),
    (["bogus"], ["No such command 'bogus'"]),
]


def _snapshot(folder) -> dict[str, bytes | None]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = None if os.path.isdir(path) else open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """The folder every row runs in: good.db (a finished hopper run), locked.db (its run written by a live
    process), no-runs.db, damaged.db (truncated), foreign.db, empty.db and folder/."""
    folder = tmp_path_factory.mktemp("invocations")
    cfg = SearchConfig(fitness=FitnessConfig(tasks=("hopper",)), max_evaluations=48, max_seconds=None)
    with ArchiveStore(folder / "good.db") as store:
        with Search.start(store, cfg) as search:
            store.add_candidate(search.run_id, objective=baseline("dpo"), origin="zoo", generation=0,
                                status="evaluated", fitness=40.0, ci95=1.0, descriptors={"complexity": 10.0})
            store.set_run_status(search.run_id, "finished")
    shutil.copy(folder / "good.db", folder / "locked.db")
    with ArchiveStore(folder / "locked.db") as store:  # the parent of this process writes run 1
        store.put_state(1, "lock", {"host": socket.gethostname(), "pid": os.getppid(),
                                    "start": _start_time(os.getppid()), "since": "2026-01-01T00:00:00"})
    ArchiveStore(folder / "no-runs.db").close()
    (folder / "damaged.db").write_bytes((folder / "good.db").read_bytes()[:6000])
    with sqlite3.connect(folder / "foreign.db") as db:
        db.execute("CREATE TABLE t (x)")
    (folder / "empty.db").write_bytes(b"")
    (folder / "folder").mkdir()
    return folder


@pytest.fixture
def in_archives(archives, monkeypatch):
    monkeypatch.chdir(archives)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MPO_DISCOVER_DEBUG"):
        monkeypatch.delenv(name, raising=False)

    def no_work(*args, **kwargs):
        raise AssertionError("the options were accepted: the search started")

    monkeypatch.setattr(cli, "_search", no_work)
    return archives


def test_the_table_covers_every_command():
    assert len(ROWS) >= 60
    commands = {" ".join(args[:2]) if args[0] in ("archive", "datasets", "policies", "suite") else args[0]
                for args, _ in ROWS}
    assert {"run", "export", "bench", "archive list", "archive show", "archive map", "archive lineage",
            "datasets build", "datasets show", "datasets reference", "policies show", "policies train",
            "suite check"} <= commands


@pytest.mark.parametrize("args, words", ROWS, ids=[" ".join(args) for args, _ in ROWS])
def test_a_bad_invocation_is_one_error_line_and_changes_nothing(in_archives, args, words):
    before = _snapshot(in_archives)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: "), result.output
    assert len(lines) == 1 or (len(lines) == 3 and lines[2].strip() == "^"), result.output  # or the caret display
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(in_archives) == before, "a file was written, changed or left behind"
