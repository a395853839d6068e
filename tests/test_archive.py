"""The archive: SQLite store (durability, transactions, dedupe, lineage, state), the QD grid and hall of
fame, the plots and the `discover archive` commands."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from archive.qd import AddStatus, DescriptorSpec, HallOfFame, QDArchive
from archive.store import ArchiveError, ArchiveStore
from grammar.objective import Objective
from grammar.zoo import baseline

SPECS = [DescriptorSpec("complexity", 0.0, 100.0, 10), DescriptorSpec("saturation", 0.0, 1.0, 4)]


def score_rows(mean, seeds=(0, 1), task="hopper", dataset="noisy:0.2"):
    return [{"task": task, "dataset": dataset, "seed": s, "score": mean + (-1) ** s, "returns": [1.0, 2.0],
             "stop_reason": ""} for s in seeds]


def add(store, run, obj, fitness=None, status="evaluated", **kw):
    defaults = dict(origin="gp", generation=0, ci95=None if fitness is None else 1.5,
                    descriptors={"complexity": 20.0, "saturation": 0.5}, scores=score_rows(fitness or 0.0))
    return store.add_candidate(run, objective=obj, status=status, fitness=fitness, **{**defaults, **kw})


@pytest.fixture
def store(tmp_path):
    with ArchiveStore(tmp_path / "sub" / "a.db") as s:
        yield s


# ------------------------------------------------------------------------------------------- store
def test_round_trip(store):
    run = store.create_run({"tasks": ["hopper"], "budget": 10}, seed=3, code_version="abc")
    assert store.run(run)["config"] == {"tasks": ["hopper"], "budget": 10}
    assert store.latest_run()["id"] == run and store.run(run)["status"] == "running"
    dpo = baseline("dpo")
    x = store.add_exchange(run, proposer="llm", model="m", prompt_version="v1", system="sys", prompt="p",
                           answer="a", error=None, usage={"tokens": 5}, seconds=1.5)
    cid = add(store, run, dpo, 42.0, origin="zoo", exchange_id=x, seconds=3.0)
    c = store.candidate(cid)
    assert c["objective"] == dpo and c["formula"] and c["complexity"] > 0 and len(c["structure_hash"]) == 64
    assert (c["fitness"], c["ci95"], c["status"], c["origin"], c["parents"]) == (42.0, 1.5, "evaluated", "zoo", [])
    assert c["descriptors"] == {"complexity": 20.0, "saturation": 0.5} and c["exchange_id"] == x
    light = store.candidates(run, with_objective=False)[0]
    assert "objective" not in light and light["name"] == "dpo" and light == {k: v for k, v in c.items() if k != "objective"}
    assert [s["score"] for s in store.scores(cid)] == [43.0, 41.0]
    assert store.exchange(x)["usage"] == {"tokens": 5} and len(store.exchanges(run)) == 1
    store.set_fresh(cid, 40.0, 2.0, score_rows(40.0, seeds=(1000, 1001)))
    store.set_fresh(cid, 39.0, 2.0, score_rows(39.0, seeds=(1000, 1001)))  # replaces, not appends
    assert [s["seed"] for s in store.scores(cid, fresh=True)] == [1000, 1001]
    assert len(store.scores(cid)) == 4 and store.candidate(cid)["fresh_fitness"] == 39.0
    store.set_run_status(run, "finished")
    assert store.runs()[0]["status"] == "finished"
    assert store.last_generation(run) == 0 and store.last_generation(store.create_run({}, 0, "x")) == -1


def test_candidates_filter_and_order(store):
    run = store.create_run({}, 0, "x")
    ids = [add(store, run, baseline(n), f, origin=o, generation=g) for n, f, o, g in
           (("dpo", 10.0, "zoo", 0), ("ipo", 30.0, "gp:mutate", 1), ("hinge", 20.0, "gp:cross", 2))]
    rejected = add(store, run, baseline("sft"), status="rejected", reason="not monotone\nat z=1", origin="llm")
    assert [c["id"] for c in store.candidates(run, order_by="fitness", descending=True)] == \
           [ids[1], ids[2], ids[0], rejected]  # no fitness: last
    assert [c["id"] for c in store.candidates(run, origin_prefix="gp")] == ids[1:]
    assert [c["id"] for c in store.candidates(run, status="rejected")] == [rejected]
    assert len(store.candidates(run, limit=2)) == 2
    assert [(g.kind, g.count, g.sources) for g in store.rejection_groups(run)] == [("not monotone", 1, ("llm",))]
    assert store.status_counts(run) == {"evaluated": 3, "screened": 0, "rejected": 1, "failed": 0}
    with pytest.raises(ArchiveError, match="cannot order"):
        store.candidates(run, order_by="fitness; DROP TABLE runs")


def test_transactions_roll_back_and_nest(store):
    run = store.create_run({}, 0, "x")
    with pytest.raises(RuntimeError):
        with store.transaction():
            add(store, run, baseline("dpo"), 1.0)
            store.put_state(run, "k", {"a": 1})
            raise RuntimeError("boom")
    assert store.candidates(run) == [] and store.get_state(run, "k") is None
    with store.transaction():  # an inner failure rolls back only the inner writes
        kept = add(store, run, baseline("dpo"), 1.0)
        with pytest.raises(RuntimeError):
            with store.transaction():
                add(store, run, baseline("ipo"), 2.0)
                raise RuntimeError("inner")
        with store.transaction():
            inner_ok = add(store, run, baseline("hinge"), 3.0)
    assert [c["id"] for c in store.candidates(run)] == [kept, inner_ok]
    with pytest.raises(ArchiveError, match="finite fitness"):  # a failing write leaves nothing behind
        add(store, run, baseline("sft"), float("nan"))
    assert len(store.candidates(run)) == 2


def test_wal_mode_and_concurrent_reader(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run = store.create_run({}, 0, "x")
    with store.transaction():  # a reader sees the last commit while a write transaction is open
        add(store, run, baseline("dpo"), 1.0)
        with ArchiveStore(store.path, readonly=True) as reader:
            assert reader.candidates(run) == []
    with ArchiveStore(store.path, readonly=True) as reader:
        assert len(reader.candidates(run)) == 1
        with pytest.raises(ArchiveError, match="read-only"):
            reader.create_run({}, 0, "x")


def test_bad_files_and_unknown_ids(tmp_path, store):
    with pytest.raises(ArchiveError, match="no archive"):
        ArchiveStore(tmp_path / "missing.db", readonly=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ArchiveError, match="not a readable archive"):
        ArchiveStore(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ArchiveError, match="not an MPO Discover archive"):
        ArchiveStore(other)
    store.conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(ArchiveError, match="newer"):
        ArchiveStore(store.path)
    run = store.create_run({}, 0, "x")
    for call, what in ((lambda: store.candidate(123), "unknown candidate 123"), (lambda: store.run(9), "unknown run 9"),
                       (lambda: store.exchange(5), "unknown exchange 5"), (lambda: store.lineage(77), "candidate 77"),
                       (lambda: add(store, 99, baseline("dpo"), 1.0), "unknown run 99"),
                       (lambda: add(store, run, baseline("dpo"), 1.0, parents=[555]), "parent candidate 555")):
        with pytest.raises(ArchiveError, match=what):
            call()


def test_seen_dedupes_by_structure_and_rounded_constants(store):
    run, other_run = store.create_run({}, 0, "x"), store.create_run({}, 1, "x")
    dpo = baseline("dpo")
    first = add(store, run, dpo, status="rejected", reason="x")
    add(store, run, dpo, 1.0)
    rewritten = Objective.free("dpo_free", "softplus(beta*(logp_l - ref_l) - beta*(logp_w - ref_w))")
    assert store.seen(run, rewritten) == first  # same loss, written differently
    assert store.seen(run, dpo.replace(constants={"beta": 0.1000001})) == first
    assert store.seen(run, dpo.replace(constants={"beta": 0.2})) is None
    assert store.seen(other_run, dpo) is None
    a = Objective.free("a", "c0*logp_w - c1*logp_l", constants={"c0": 1.0, "c1": 2.0})
    add(store, run, a, 1.0)
    assert store.seen(run, Objective.free("b", "c1*logp_w - c0*logp_l", constants={"c0": 2.0, "c1": 1.0}))
    assert store.seen(run, Objective.free("c", "c1*logp_w - c0*logp_l", constants={"c0": 1.0, "c1": 2.0})) is None


def test_lineage_nearest_first(store):
    run = store.create_run({}, 0, "x")
    a = add(store, run, baseline("dpo"), 1.0, origin="zoo")
    b = add(store, run, baseline("ipo"), 2.0, origin="zoo")
    c = add(store, run, baseline("hinge"), 3.0, parents=[a, b], generation=1)
    d = add(store, run, baseline("sft"), 4.0, parents=[c, a], generation=2)
    lineage = store.lineage(d)
    assert [x["id"] for x in lineage] == [d, c, a, b]
    assert [x["depth"] for x in lineage] == [0, 1, 1, 2]


def test_state_bytes_and_json(store):
    run = store.create_run({}, 0, "x")
    store.put_state(run, "es", b"\x00\x01binary")
    store.put_state(run, "counters", {"generation": 3, "nested": [1.5, None]})
    store.put_state(run, "counters", {"generation": 4})
    assert store.get_state(run, "es") == b"\x00\x01binary"
    assert store.get_state(run, "counters") == {"generation": 4}
    assert store.get_state(run, "absent", default=7) == 7
    with pytest.raises(TypeError):
        store.put_state(run, "bad", object())


CHILD = textwrap.dedent("""
    import sys
    from archive.store import ArchiveStore
    from grammar.zoo import baseline
    store = ArchiveStore(sys.argv[1])
    run = store.create_run({}, 0, "x")
    dpo = baseline("dpo")
    rows = [{"task": "hopper", "dataset": "clean", "seed": s, "score": 1.0, "returns": [1.0] * 50,
             "stop_reason": ""} for s in range(4)]
    n = 0
    while True:
        with store.transaction():
            cid = store.add_candidate(run, objective=dpo, origin="gp", generation=n, status="evaluated",
                                      fitness=float(n), scores=rows, descriptors={"complexity": 1.0})
            n += 1
            store.put_state(run, "count", {"n": n})
        print(cid, flush=True)
""")


def test_sigkill_keeps_every_committed_write(tmp_path):
    path = str(tmp_path / "killed.db")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True, env=env)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 25 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    with ArchiveStore(path, readonly=True) as reader:  # a reader in another process while the writer writes
        assert len(reader.candidates(with_objective=False)) >= len(committed)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(committed) == 25, "the writer did not get going"
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ArchiveStore(path) as store:
        run = store.latest_run()["id"]
        ids = [c["id"] for c in store.candidates(run)]
        assert set(committed) <= set(ids)
        assert store.get_state(run, "count") == {"n": len(ids)}, "a transaction was half-kept"
        assert all(len(store.scores(i)) == 4 for i in ids)


# ---------------------------------------------------------------------------------------------- QD
def test_grid_binning_matches_pyribs():
    spec = DescriptorSpec("x", 0.0, 1.0, 10)
    assert [spec.bin_of(v) for v in (-5.0, 0.0, 0.0999999999, 0.1, 0.55, 1.0, 7.0)] == [0, 0, 1, 1, 5, 9, 9]
    with pytest.raises(ValueError):
        DescriptorSpec("x", 1.0, 1.0, 3)


def test_qd_add_statuses_coverage_and_score():
    qd = QDArchive(SPECS)
    assert qd.add(1, 10.0, {"complexity": 15, "saturation": 0.1}) is AddStatus.NEW
    assert qd.add(2, 10.0, {"complexity": 12, "saturation": 0.2}) is AddStatus.NOT_ADDED  # tie keeps the first
    assert qd.add(3, 12.0, {"complexity": 18, "saturation": 0.0}) is AddStatus.IMPROVED
    assert qd.add(4, -5.0, {"complexity": 95, "saturation": 0.9}) is AddStatus.NEW
    assert qd.add(5, 3.0, {"complexity": 500, "saturation": 0.8, "other": 1}) is AddStatus.IMPROVED  # clipped
    assert len(qd) == 2 and qd.coverage == 2 / 40
    assert qd.qd_score == 12.0 + 3.0  # elites below the offset add nothing
    assert qd.best.candidate_id == 3 and qd.elite((1, 0)).candidate_id == 3
    assert [e.candidate_id for e in qd.elites()] == [3, 5]
    assert qd.fitness_grid()[9, 3] == 3.0
    with pytest.raises(ValueError):
        qd.add(6, float("nan"), {"complexity": 1, "saturation": 0})
    with pytest.raises(KeyError):
        qd.add(6, 1.0, {"complexity": 1})


def test_hall_of_fame_front():
    hof = HallOfFame()
    for cid, fitness, cx in ((1, 10.0, 5), (2, 8.0, 7), (3, 20.0, 9), (4, 15.0, 12), (5, 25.0, 30), (6, 11.0, 5)):
        hof.add(cid, fitness, cx)
    assert [e.candidate_id for e in hof.best_by_complexity()] == [6, 2, 3, 4, 5]
    assert [e.candidate_id for e in hof.front()] == [6, 3, 5]
    assert hof.is_on_front(3) and not hof.is_on_front(4)


def test_from_store_equals_incremental(store):
    run = store.create_run({}, 0, "x")
    qd, hof = QDArchive(SPECS), HallOfFame()
    values = [(f, {"complexity": cx, "saturation": s}) for f, cx, s in
              ((5.0, 70, 0.1), (7.0, 12, 0.2), (6.0, 50, 0.9), (9.0, 11, 0.05), (1.0, 90, 0.6))]
    for i, (fitness, desc) in enumerate(values):
        cid = add(store, run, baseline("dpo"), fitness, descriptors=desc, origin="zoo" if i == 0 else "gp")
        qd.add(cid, fitness, desc)
        hof.add(cid, fitness, store.candidate(cid)["complexity"])
        add(store, run, baseline("sft"), status="rejected", reason="no", descriptors={})
    rebuilt = QDArchive.from_store(store, run, SPECS)
    assert rebuilt.elites() == qd.elites() and rebuilt.stats() == qd.stats()
    assert HallOfFame.from_store(store, run).front() == hof.front()
    without = QDArchive.from_store(store, run, SPECS, include_baselines=False)
    assert len(without) == len(qd) - 1 and without.best == qd.best


# -------------------------------------------------------------------------------------- plots + CLI
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small archive: four zoo baselines, GP children, a rejected and a failed proposal, an LLM one."""
    path = str(tmp_path_factory.mktemp("archive") / "archive.db")
    with ArchiveStore(path) as store:
        run = store.create_run({"descriptors": "complexity,saturation"}, seed=0, code_version="test")
        zoo = {}
        for i, (name, fitness, sat) in enumerate((("dpo", 40.0, 0.47), ("ipo", 35.0, 0.02), ("hinge", 30.0, 1.0),
                                                  ("sft", 20.0, 0.0))):
            zoo[name] = add(store, run, baseline(name), fitness, origin="zoo",
                            descriptors={"complexity": 10.0 * (i + 1), "saturation": sat}, scores=score_rows(fitness))
        child = add(store, run, baseline("dpo").replace(constants={"beta": 0.3}, name="gp_1"), 45.0,
                    origin="gp:mutate", generation=1, parents=[zoo["dpo"]], scores=score_rows(45.0))
        store.set_fresh(child, 44.0, 2.0, score_rows(44.0, seeds=(1000, 1001)))
        add(store, run, baseline("sft"), status="rejected", reason="not decreasing in the margin", generation=1)
        add(store, run, baseline("ipo"), status="failed", reason="nan loss at step 3", generation=1)
        x = store.add_exchange(run, proposer="llm", model="fake-model", prompt_version="v1", system="s",
                               prompt="propose a loss", answer="g = softplus(-z)", error=None, usage=None, seconds=2.0,
                               rejections=[('{"g": "eval(z)"}', "objective 2: g: unknown function 'eval'")],
                               answer_shape="wrapper")
        llm = add(store, run, Objective.mpo("llm_1", g="softplus(-z) + c0*relu(-z)", constants={"c0": 0.5}), 50.0,
                  origin="llm", generation=2, parents=[child, zoo["hinge"]], exchange_id=x,
                  descriptors={"complexity": 33.0, "saturation": 0.6}, scores=score_rows(50.0))
    return {"path": path, "child": child, "llm": llm, "zoo": zoo}


runner = CliRunner()


def cli(*args):
    from discovery import cli_archive

    cli_archive.console.width = 250  # wide tables stay on one line each
    return runner.invoke(cli_archive.archive_app, [str(a) for a in args])


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000


def test_cli_list(synthetic):
    result = cli("list", "--archive", synthetic["path"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "coverage" in out and "QD-score" in out and "best found 50.0" in out and "best baseline 40.0 (dpo)" in out
    assert "zoo:dpo" in out and "not decreasing in the margin" in out and "44.0 ± 2.0" in out
    assert out.index("zoo:dpo") > out.index("gp:mutate")  # by fitness, best first
    result = cli("list", "--archive", synthetic["path"], "--sort", "id", "--status", "rejected", "--limit", "5")
    assert result.exit_code == 0 and "rejected" in result.output and "zoo:dpo" not in result.output
    assert "refused inside LLM answers: 1" in result.output and "unknown function 'eval'" in result.output
    assert "parse error" in result.output  # grouped by kind


def test_cli_show_lineage_map(synthetic, tmp_path):
    result = cli("show", synthetic["llm"], "--archive", synthetic["path"], "--plots", tmp_path)
    assert result.exit_code == 0, result.output
    for fragment in ("begin{aligned}", "c0", "hopper", "dpo (#", "fake-model", "propose a loss", "lineage"):
        assert fragment in result.output, fragment
    assert_png(tmp_path / f"candidate-{synthetic['llm']}-shape.png")
    result = cli("show", synthetic["child"], "--archive", synthetic["path"], "--no-plot")
    assert result.exit_code == 0 and "fresh seeds" in result.output
    result = cli("lineage", synthetic["llm"], "--archive", synthetic["path"])
    assert result.exit_code == 0, result.output
    assert "zoo:dpo" in result.output and "zoo:hinge" in result.output and "4 candidate(s)" in result.output
    result = cli("map", "--archive", synthetic["path"], "--plots", tmp_path)
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and "50.0 #" in result.output
    assert_png(tmp_path / "run1-map.png")
    assert_png(tmp_path / "run1-fitness.png")
    result = cli("map", "--archive", synthetic["path"], "--plots", tmp_path,
                 "--descriptors", "complexity=0:60:6,saturation=0:1:2,asymmetry")
    assert result.exit_code == 0, result.output


def test_cli_names_the_zoo_structure(synthetic):
    """A found loss whose structure is a zoo loss's is shown as that loss at its constants."""
    table = cli("list", "--archive", synthetic["path"]).output.split("└")[0]  # the candidates' table
    formula = {cells[1].strip(): cells[-2].strip() for cells in (ln.split("│") for ln in table.splitlines()[1:])
               if len(cells) > 2}
    assert formula[str(synthetic["child"])] == "= dpo at β 0.3: g=-logsigmoid(z)  [beta=0.3]"  # constants kept
    assert formula[str(synthetic["zoo"]["dpo"])].startswith("= dpo at β 0.1: ")
    assert formula[str(synthetic["zoo"]["sft"])] == "= sft: -logp_w"
    assert formula[str(synthetic["llm"])] == "g=c0*relu(-z) + softplus(-z)  [beta=0.1, c0=0.5]"
    child = cli("show", synthetic["child"], "--archive", synthetic["path"], "--no-plot").output
    assert "zoo structure: dpo at β 0.3\n" in child
    llm = cli("show", synthetic["llm"], "--archive", synthetic["path"], "--no-plot").output
    assert "zoo structure: none (a new structure)" in llm


def test_cli_says_whether_a_fitness_counts_only_what_the_labels_add(tmp_path):
    path = str(tmp_path / "c.db")
    with ArchiveStore(path) as store:
        run = store.create_run({"descriptors": "complexity,saturation"}, seed=0, code_version="test")
        twins = add(store, run, baseline("dpo"), 40.0, controlled=True)
        plain = add(store, run, baseline("hinge"), 30.0, controlled=False)
        assert store.candidate(twins)["controlled"] is True and store.candidate(plain)["controlled"] is False
    listed = cli("list", "--archive", path).output
    assert "≤ 30.0 ± 1.5" in listed and "≤ 40.0" not in listed
    assert "fitness: what the labels add" in cli("show", twins, "--archive", path, "--no-plot").output
    assert "an upper bound" in cli("show", plain, "--archive", path, "--no-plot").output


@pytest.mark.parametrize("args,fragment", [
    (["list", "--archive", "{tmp}/nope.db"], "no archive at"),
    (["show", "999", "--archive", "{path}"], "unknown candidate 999"),
    (["list", "--archive", "{path}", "--run", "7"], "unknown run 7"),
    (["show", "1", "--archive", "{path}", "--run", "7", "--no-plot"], "unknown run 7"),
    (["list", "--archive", "{path}", "--sort", "name"], "unknown sort"),
    (["map", "--archive", "{path}", "--descriptors", "colour"], "unknown descriptor 'colour'"),
    (["lineage", "5", "--archive", "{tmp}/junk.db"], "not a readable archive"),
])
def test_cli_errors_are_one_line(synthetic, tmp_path, args, fragment):
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    result = cli(*(a.format(tmp=tmp_path, path=synthetic["path"]) for a in args))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output


def test_plots_write_pngs(tmp_path):
    from archive.plots import plot_fitness_over_time, plot_heatmap, plot_loss_shape

    qd = QDArchive(SPECS + [DescriptorSpec("asymmetry", 0.0, 1.0, 2)])
    qd.add(1, 10.0, {"complexity": 15, "saturation": 0.1, "asymmetry": 0.5})
    assert_png(plot_heatmap(qd, str(tmp_path / "h.png")))
    assert_png(plot_heatmap(QDArchive(SPECS[:1]), str(tmp_path / "h1.png")))
    rows = [{"fitness": f} for f in (1.0, None, 5.0, 3.0)]
    assert_png(plot_fitness_over_time(rows, str(tmp_path / "f.png"), baseline=4.0))
    assert_png(plot_fitness_over_time([], str(tmp_path / "f0.png")))
    mixed = [{"fitness": 4.0, "origin": "zoo"}, {"fitness": 6.0, "origin": "gp:point"}]
    assert_png(plot_fitness_over_time(mixed, str(tmp_path / "f2.png"), baseline=4.0, baseline_name="dpo", pi_ref=3.0))
    assert_png(plot_loss_shape(baseline("ta_mpo"), str(tmp_path / "s.png")))
    assert_png(plot_loss_shape(baseline("sft"), str(tmp_path / "s2.png"), reference=baseline("ipo")))


# ------------------------------------------------------------------- read-only, migration, run lock
def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_browsing_writes_nothing_not_even_beside_a_damaged_file(tmp_path):
    with ArchiveStore(tmp_path / "a.db") as store:
        add(store, store.create_run({}, 0, "x"), baseline("dpo"), 1.0)
    (tmp_path / "truncated.db").write_bytes((tmp_path / "a.db").read_bytes()[:6000])
    before = _files(tmp_path)
    with ArchiveStore(tmp_path / "a.db", readonly=True) as reader:
        assert len(reader.candidates()) == 1
    for damaged in (True, False):  # a writer checks a damaged file read-only first
        with pytest.raises(ArchiveError, match="not a readable archive"):
            ArchiveStore(tmp_path / "truncated.db", readonly=damaged)
    assert _files(tmp_path) == before, "no -shm or -wal left behind"


def test_browsing_works_on_a_read_only_file_system(tmp_path):
    source, mount = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    with ArchiveStore(source / "a.db") as store:
        add(store, store.create_run({}, 0, "x"), baseline("dpo"), 1.0)
    if subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount a read-only folder here (needs root)")
    try:
        with pytest.raises(OSError):
            (mount / "probe").write_text("")
        with ArchiveStore(mount / "a.db", readonly=True) as reader:
            assert len(reader.candidates()) == 1
        result = cli("list", "--archive", mount / "a.db")
        assert result.exit_code == 0 and "1 evaluated" in result.output, result.output
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_version_1_archive_is_read_as_it_is_and_migrated_by_a_writer(tmp_path):
    path = tmp_path / "v1.db"
    with ArchiveStore(path) as store:
        run = store.create_run({}, 0, "x")
        store.add_exchange(run, proposer="llm", model="m", prompt_version="v", system="s", prompt="p", answer="a",
                           error=None, usage=None, seconds=1.0)
    db = sqlite3.connect(path)
    db.executescript("ALTER TABLE exchanges DROP COLUMN rejections; ALTER TABLE exchanges DROP COLUMN answer_shape;"
                     "DROP INDEX candidates_behaviour; ALTER TABLE candidates DROP COLUMN behaviour;"
                     "ALTER TABLE candidates DROP COLUMN units; ALTER TABLE candidates DROP COLUMN controlled; UPDATE schema_version SET version = 1;")
    db.close()
    with ArchiveStore(path, readonly=True) as reader:
        assert reader.exchanges(run)[0]["rejections"] == [] and reader.rejections(run) == []
    with ArchiveStore(path) as store:
        assert store.conn.execute("SELECT version FROM schema_version").fetchone()[0] == ArchiveStore.SCHEMA_VERSION
        store.add_exchange(run, proposer="llm", model="m", prompt_version="v", system="s", prompt="p", answer="b",
                           error=None, usage=None, seconds=1.0, rejections=[("x", "empty answer")])
        assert store.rejections(run) == [("llm", "empty answer", "x")]
        cid = store.add_candidate(run, objective=baseline("dpo"), origin="zoo", generation=0, status="evaluated",
                                  fitness=1.0, behaviour="abc", units=4)
        assert store.candidate(cid)["units"] == 4 and store.seen_behaviour(run, "abc") == cid
        assert store.seen_behaviour(run, "other") is None


HOLDER = textwrap.dedent("""
    import sys, time
    from archive.store import ArchiveStore
    store = ArchiveStore(sys.argv[1])
    store.lock_run(int(sys.argv[2]))
    print("locked", flush=True)
    time.sleep(60)
""")


def test_one_writer_per_run_and_a_dead_holder_is_taken_over(tmp_path):
    path = str(tmp_path / "a.db")
    with ArchiveStore(path) as store:
        run = store.create_run({}, 0, "x")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(run)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with ArchiveStore(path) as store:
            with pytest.raises(ArchiveError, match=f"being written by process {holder.pid}"):
                store.lock_run(run)
            store.lock_run(store.create_run({}, 0, "x"))  # another run of the same archive is free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with ArchiveStore(path) as store:  # the lock survived the SIGKILL, and its holder is gone: taken over
        assert store.get_state(run, "lock")["pid"] == holder.pid
        store.lock_run(run)
        assert store.get_state(run, "lock")["pid"] == os.getpid()
        store.lock_run(run)  # this process may take it again
        store.unlock_run(run)
        assert store.get_state(run, "lock") is None


@pytest.mark.parametrize("reason, kind", [
    ("duplicate of #12", "duplicate"),
    ("duplicate of g3_1 in the same generation", "duplicate"),
    ("loss is not finite on 3/1100 probes, e.g. at logp_w=-2000", "loss not finite"),
    ("the loss increases with logp_w on 4.2% of the probes, e.g. at logp_w=-3", "non-monotone in logp_w"),
    ("g must be non-increasing in the margin but increases at z=0.5, t=0 (on 50.0% of the grid)", "g increasing"),
    ("objective 3: invalid: g must be non-increasing in the margin", "g increasing"),
    ("objective 2: g: unknown function 'eval'; allowed: abs, exp", "parse error"),
    ("objectives 17-500: beyond the limit of 16 objectives per answer", "too many proposals"),
    ("malformed JSON: Expecting ',' at line 1 col 5", "unusable answer"),
    ("descriptor: saturation is not finite", "descriptor undefined"),
    ("something new: 42", "something new"),
])
def test_rejection_kinds(reason, kind):
    from archive.rejections import rejection_kind

    assert rejection_kind(reason) == kind


def test_rejections_are_grouped_by_kind_with_one_example(store):
    run = store.create_run({}, 0, "x")
    for i in range(5):
        add(store, run, baseline("sft").replace(name=f"s{i}"), status="rejected", origin="gp:point",
            reason=f"g must be non-increasing in the margin but increases at z={i}.5, t=0 (on {i}0% of the grid)")
    add(store, run, baseline("ipo"), status="rejected", origin="es:cma", reason="duplicate of #1")
    groups = store.rejection_groups(run)
    assert [(g.kind, g.count, g.sources) for g in groups] == [("g increasing", 5, ("gp",)), ("duplicate", 1, ("es",))]
    assert "z=4.5" in groups[0].example


def test_a_version_4_archive_is_migrated_to_the_screened_status_with_its_scores(tmp_path):
    path = tmp_path / "v4.db"
    with ArchiveStore(path) as store:
        run = store.create_run({}, 0, "x")
        kept = add(store, run, baseline("dpo"), 12.0)
    db = sqlite3.connect(path)  # the version 4 table: no 'screened' in its CHECK
    old = db.execute("SELECT sql FROM sqlite_master WHERE name = 'candidates'").fetchone()[0]
    db.executescript("PRAGMA foreign_keys = OFF; BEGIN;"
                     + old.replace("candidates", "candidates_v4").replace("'screened', ", "") + ";"
                     "INSERT INTO candidates_v4 SELECT * FROM candidates; DROP TABLE candidates;"
                     "ALTER TABLE candidates_v4 RENAME TO candidates; UPDATE schema_version SET version = 4; COMMIT;")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE candidates SET status = 'screened', fitness = NULL")
    db.close()
    with ArchiveStore(path) as store:
        assert store.conn.execute("SELECT version FROM schema_version").fetchone()[0] == ArchiveStore.SCHEMA_VERSION
        assert store.candidate(kept)["fitness"] == 12.0 and len(store.scores(kept)) == 2
        add(store, run, baseline("ipo"), status="screened", reason="3.0 after 75 PO steps")
        assert store.status_counts(run) == {"evaluated": 1, "screened": 1, "rejected": 0, "failed": 0}
        assert [c["id"] for c in store.candidates(run, status="evaluated")] == [kept]
        assert store.best_found(run)["id"] == kept
        with pytest.raises(ArchiveError, match="screened candidate has no fitness"):
            add(store, run, baseline("hinge"), 3.0, status="screened")
        with pytest.raises(sqlite3.IntegrityError):  # the references still hold
            store.conn.execute("INSERT INTO scores (candidate_id, fresh, task, dataset, seed, returns, stop_reason, "
                               "extra) VALUES (999, 0, 't', 'd', 0, '[]', '', '{}')")
        assert {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} >= \
            {"candidates_run", "candidates_dedupe", "candidates_behaviour"}
